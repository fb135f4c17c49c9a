//! Spin key-value stores, kept in one SQLite file (as `spin up` does), so a
//! delivery id the master has dispatched survives a restart.

use std::path::Path;
use std::sync::Mutex;

use anyhow::Context as _;
use rusqlite::{Connection, OptionalExtension as _, params};

pub struct KvStores {
    db: Mutex<Connection>,
}

impl KvStores {
    /// A file-backed set of stores, or an in-memory one for `None`.
    pub fn open(path: Option<&Path>) -> anyhow::Result<Self> {
        let db = match path {
            Some(p) => {
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
                }
                Connection::open(p).with_context(|| format!("cannot open the key-value file {}", p.display()))?
            }
            None => Connection::open_in_memory()?,
        };
        db.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE IF NOT EXISTS kv (store TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
                                            PRIMARY KEY (store, key));",
        )?;
        Ok(Self { db: Mutex::new(db) })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, store: &str, key: &str) -> rusqlite::Result<Option<Vec<u8>>> {
        self.db()
            .query_row("SELECT value FROM kv WHERE store = ?1 AND key = ?2", params![store, key], |r| r.get(0))
            .optional()
    }

    pub fn set(&self, store: &str, key: &str, value: &[u8]) -> rusqlite::Result<()> {
        self.db().execute(
            "INSERT INTO kv (store, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
            params![store, key, value],
        )?;
        Ok(())
    }

    pub fn delete(&self, store: &str, key: &str) -> rusqlite::Result<()> {
        self.db().execute("DELETE FROM kv WHERE store = ?1 AND key = ?2", params![store, key])?;
        Ok(())
    }

    pub fn keys(&self, store: &str) -> rusqlite::Result<Vec<String>> {
        let db = self.db();
        let mut stmt = db.prepare("SELECT key FROM kv WHERE store = ?1 ORDER BY key")?;
        stmt.query_map(params![store], |r| r.get(0))?.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_persist_per_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.db");
        {
            let kv = KvStores::open(Some(&path)).unwrap();
            kv.set("default", "a", b"1").unwrap();
            kv.set("default", "a", b"2").unwrap();
            kv.set("other", "b", b"3").unwrap();
        }
        let kv = KvStores::open(Some(&path)).unwrap();
        assert_eq!(kv.get("default", "a").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(kv.get("default", "b").unwrap(), None);
        assert_eq!(kv.keys("other").unwrap(), vec!["b".to_string()]);
        kv.delete("default", "a").unwrap();
        assert_eq!(kv.get("default", "a").unwrap(), None);
    }
}

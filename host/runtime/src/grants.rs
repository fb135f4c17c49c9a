//! Where a step's capabilities are decided. The pipeline's [`Grants`] (read once with the
//! pipeline, shown by `skiff validate --plan`) become what the runtime enforces, with
//! `${inputs.NAME}` hosts taken from the step's inputs; the component's own request (its
//! manifest) is checked against that once, before the step starts. A step's capabilities are
//! decided nowhere else.

use std::collections::BTreeMap;

use crate::bindings::Capabilities;
use crate::capabilities::http::Allowlist;
use crate::capabilities::process::ProcessGrant;
use crate::pipeline::Grants;

/// Why a step's grants cannot be enforced, or why its component is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// A granted host is not a host pattern.
    #[error("{0}")]
    BadHost(String),
    /// The component asks for `process`, which the step is not granted.
    #[error(
        "step `{step}` asks for the `process` capability, which is not granted: add `permissions: {{ process: true }}`"
    )]
    ProcessNotGranted {
        /// The component's name.
        step: String,
    },
    /// The component asks for a host the step is not granted.
    #[error(
        "step `{step}` asks for network access to `{host}`, which is not granted: add it to `permissions.hosts` (or pass --allow-host)"
    )]
    HostNotGranted {
        /// The component's name.
        step: String,
        /// The host (an input's value, for `${inputs.NAME}`).
        host: String,
    },
}

/// What the runtime enforces for one step.
#[derive(Debug, Clone, Default)]
pub struct Enforced {
    /// Hosts the step (and its processes) may reach.
    pub allow: Allowlist,
    /// What it may do with processes.
    pub process: ProcessGrant,
}

/// Turns a step's grants into what the runtime enforces. `unsandboxed` is the host's
/// `--unsandboxed-processes`. A read-only step (a fork's pull request) gets GET and HEAD to its
/// hosts and processes without network, whatever it was granted.
pub fn enforce(grants: &Grants, inputs: &BTreeMap<String, String>, unsandboxed: bool) -> Result<Enforced, GrantError> {
    let hosts: Vec<String> = grants.hosts.iter().filter_map(|h| resolve(h, inputs)).collect();
    let allow = Allowlist::parse(&hosts).map_err(GrantError::BadHost)?;
    Ok(Enforced {
        allow: if grants.read_only { allow.read_only() } else { allow },
        process: ProcessGrant {
            allowed: grants.process,
            network: grants.network && !grants.read_only,
            unsandboxed,
            ..ProcessGrant::default()
        },
    })
}

/// Checks what the component `name` asks for against what is enforced; the error says what to
/// grant.
pub fn check(
    name: &str,
    asks: &Capabilities,
    allow: &Allowlist,
    process: &ProcessGrant,
    inputs: &BTreeMap<String, String>,
) -> Result<(), GrantError> {
    if asks.process && !process.allowed {
        return Err(GrantError::ProcessNotGranted { step: name.into() });
    }
    for host in &asks.hosts {
        let Some(need) = resolve(host, inputs) else { continue };
        if !allow.covers(&need) {
            return Err(GrantError::HostNotGranted { step: name.into(), host: need });
        }
    }
    Ok(())
}

/// A host as granted or asked for, with `${inputs.NAME}` replaced by that input (none when the
/// input is empty or missing).
pub fn resolve(pattern: &str, inputs: &BTreeMap<String, String>) -> Option<String> {
    if let Some(name) = pattern.strip_prefix("${inputs.").and_then(|r| r.strip_suffix('}')) {
        let v = inputs.get(name)?.trim();
        return (!v.is_empty()).then(|| v.to_string());
    }
    Some(pattern.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn input_hosts_are_resolved_and_read_only_narrows_everything() {
        let grants = Grants {
            hosts: vec!["${inputs.webhook}".into(), "${inputs.empty}".into(), "api.example.com".into()],
            process: true,
            network: true,
            ..Grants::default()
        };
        let i = inputs(&[("webhook", "https://hooks.example.org/x"), ("empty", " ")]);
        let e = enforce(&grants, &i, false).unwrap();
        assert!(e.allow.covers("https://hooks.example.org/y") && e.allow.covers("api.example.com"));
        assert!(e.process.allowed && e.process.network);
        let ro = enforce(&Grants { read_only: true, ..grants.clone() }, &i, false).unwrap();
        assert!(ro.process.allowed && !ro.process.network);
        assert!(ro.allow.is_read_only());
        let asks = Capabilities { hosts: vec!["${inputs.webhook}".into()], secrets: vec![], process: true };
        check("notify", &asks, &e.allow, &e.process, &i).unwrap();
        let none = enforce(&Grants::default(), &i, false).unwrap();
        let err = check("notify", &asks, &none.allow, &none.process, &i).unwrap_err();
        assert_eq!(err, GrantError::ProcessNotGranted { step: "notify".into() });
        let err = err.to_string();
        assert!(err.contains("`process`") && err.contains("permissions: { process: true }"), "{err}");
        let asks = Capabilities { process: false, ..asks };
        let err = check("notify", &asks, &none.allow, &none.process, &i).unwrap_err();
        assert!(matches!(&err, GrantError::HostNotGranted { host, .. } if host == "https://hooks.example.org/x"));
        let err = err.to_string();
        assert!(err.contains("hooks.example.org") && err.contains("permissions.hosts"), "{err}");
        let bad = enforce(&Grants { hosts: vec!["a.*.example.com".into()], ..Grants::default() }, &i, false);
        assert!(matches!(bad, Err(GrantError::BadHost(_))), "{bad:?}");
    }
}

//! The one shared wasmtime `Engine`, configured once: Cranelift, epoch
//! interruption (or fuel), and the pooling allocator.

use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

/// How often the epoch advances: the granularity of CPU and wall limits.
pub const TICK: Duration = Duration::from_millis(10);

/// Engine settings. Changing any of them changes the cache key of compiled components.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Preallocate instance slots (faster starts, fixed virtual-memory reservation).
    pub pooling: bool,
    /// Slots in the pool: the most steps running at once.
    pub pool_size: u32,
    /// Largest linear memory a step may be given.
    pub max_memory: u64,
    /// Count fuel for deterministic CPU budgets (about 30 % slower than epochs).
    pub fuel: bool,
    /// Address space reserved per linear memory (`None`: wasmtime's 4 GiB, which lets
    /// compiled code skip bounds checks). Each pool slot reserves this plus a guard region,
    /// so tens of thousands of slots need a smaller one: at 64 MiB, 50,000 slots fit where
    /// 11,000 of 4 GiB do not (`mmap` fails). It also caps `max_memory`.
    pub memory_reservation: Option<u64>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self { pooling: true, pool_size: 1000, max_memory: 4 << 30, fuel: false, memory_reservation: None }
    }
}

/// Raises this process's soft limit on open files to its hard limit (and, for root, the hard
/// limit to the kernel's `fs.nr_open`): each running step holds descriptors (its workspace),
/// and the usual soft limit of 1,024 would stop a host far below its pool size. Returns the
/// soft limit now in force.
pub fn raise_open_file_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    let hard = now.maximum.unwrap_or(u64::MAX);
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse::<u64>().ok());
    if let Some(max) = nr_open.filter(|&m| m > hard) {
        // Only root may raise the hard limit; for anyone else this fails and it stays.
        if setrlimit(Resource::Nofile, Rlimit { current: Some(max), maximum: Some(max) }).is_ok() {
            return max;
        }
    }
    match now.current {
        Some(soft) if soft < hard => {
            let raised = Rlimit { current: Some(hard), maximum: now.maximum };
            if setrlimit(Resource::Nofile, raised).is_ok() { hard } else { soft }
        }
        soft => soft.unwrap_or(u64::MAX),
    }
}

pub fn build(opts: &EngineOptions) -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.cranelift_opt_level(OptLevel::Speed);
    config.epoch_interruption(!opts.fuel);
    config.consume_fuel(opts.fuel);
    config.max_wasm_stack(1 << 20);
    // Steps are WASI 0.2 and synchronous: skip the async component model's per-store state.
    config.concurrency_support(false);
    let mut max_memory = opts.max_memory;
    if let Some(r) = opts.memory_reservation {
        config.memory_reservation(r);
        max_memory = max_memory.min(r);
    }
    if opts.pooling {
        let n = opts.pool_size;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(n)
            .total_core_instances(n * 8)
            .total_memories(n * 2)
            .total_tables(n * 4)
            .total_stacks(n)
            .max_core_instances_per_component(32)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .max_memory_size(max_memory as usize)
            .max_component_instance_size(1 << 20)
            .max_core_instance_size(1 << 20)
            .table_elements(100_000);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    let engine = Engine::new(&config)?;
    if !opts.fuel {
        spawn_ticker(engine.weak());
    }
    Ok(engine)
}

/// Advances the epoch every [`TICK`] until the engine is dropped.
pub fn spawn_ticker(engine: wasmtime::EngineWeak) {
    std::thread::Builder::new()
        .name("skiff-epoch".into())
        .spawn(move || {
            while let Some(engine) = engine.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(TICK);
            }
        })
        .expect("spawning the epoch thread");
}

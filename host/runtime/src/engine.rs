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
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self { pooling: true, pool_size: 1000, max_memory: 4 << 30, fuel: false }
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
            .max_memory_size(opts.max_memory as usize)
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

//! Host bindings of the `step` world in `wit/step.wit`, the only definition of the step ABI.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "step",
    imports: {
        "skiff:step/process.run": async | trappable,
        // Archiving, restoring and copying files run on blocking threads, not the guest's.
        "skiff:step/artifacts.download": async | trappable,
        "skiff:step/cache.restore": async | trappable,
        "skiff:step/cache.save": async | trappable,
        default: trappable,
    },
    exports: { default: async },
});

pub use skiff::step::types::{Capabilities, Pair};

//! The one `bindgen!` of the host, over the shared `wit/` folder, and the host side of its
//! imports. Nothing else in the host names generated types directly.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "sluice:platform/handler",
    exports: { default: async },
});

pub use sluice::platform::log::Level;
pub use sluice::platform::types::Payload;

use super::sandbox::Sandbox;

impl sluice::platform::types::Host for Sandbox {}

impl sluice::platform::log::Host for Sandbox {
    fn write(&mut self, level: Level, message: String) {
        let level = match level {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        self.log.line(level, &message);
    }
}

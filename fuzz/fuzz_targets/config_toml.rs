//! Config files (crates/iotsync-server/src/config.rs): a `--config` file layered over
//! the built-in defaults, then validated. No panic, whatever the text; a config that
//! validates turns into a backlog configuration without panicking; and loading is
//! deterministic (the same text gives the same config or the same error).
#![no_main]

use iotsync_server::config::{ConfigOverrides, ServerConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let load = || {
        ServerConfig::layered(
            Some(("fuzz.toml", text)),
            ConfigOverrides::default(),
            ConfigOverrides::default(),
        )
    };
    let first = load();
    match (&first, &load()) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("loading the same text twice gave different outcomes"),
    }
    if let Ok(cfg) = first {
        cfg.validate()
            .expect("layered() returned a config validate() refuses");
        let _ = cfg.delivery.backlog_config();
    }
});

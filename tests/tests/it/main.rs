//! Every black-box test in one binary: one link of wasmtime instead of one per file (disk and
//! build time on CI), and nextest still runs each test in its own process.

mod binary;
mod callbacks;
mod cli_follow;
mod claim_checks;
mod config_secrets;
mod console;
mod connections;
mod core_loop;
mod crash_safety;
mod data_files;
mod emissions;
mod errors;
mod failures;
mod group_commit;
mod hostile;
mod kill9;
mod kv;
mod lifecycle;
mod nats_conformance;
mod openapi;
mod outbound;
mod outbox;
mod output_memory;
mod pool_limits;
mod readme;
mod restart;
mod sandbox;
mod scale_out;
mod scheduling;
mod sdk_outside;
mod storage_full;
mod store_conformance;
mod streams;
mod topics;
mod traces;

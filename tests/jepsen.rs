//! The Jepsen-style fault test. `make test` runs a short mixed-fault run; `make jepsen`
//! runs longer ones (`JEPSEN_TIME`, `JEPSEN_SEED`, `JEPSEN_FAULTS`). Results go to
//! `results/jepsen-<seed>/`.

mod common;
#[path = "jepsen/mod.rs"]
mod jepsen;
#[path = "common/lossy_fs.rs"]
mod lossy_fs;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn register_and_set_workloads_under_faults() {
    let cfg = jepsen::RunConfig::from_env(45);
    let report = jepsen::run(cfg).await;
    println!("{}", report.summary);
    println!("results in {}", report.dir.display());
    assert!(
        report.valid,
        "the history is not valid:\n{}",
        report.summary
    );
}

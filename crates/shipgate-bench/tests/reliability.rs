//! The reliability harness's short form, as CI runs it: chaos with `kill -9` across three
//! replicas, a database restart (on a private cluster), a provider fault storm and steady mixed
//! load, all against the real `shipgate` binary. The long form: `shipgate-bench harness --long`.

use shipgate_bench::harness::{run, Form};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_end_right_and_nothing_is_deployed_twice_under_kills_restarts_and_faults() {
    run(Form::Short).await.expect("the short harness passes");
}

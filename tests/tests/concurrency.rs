//! Many users at once on one SQLite file (`rdm up`): writes that read first
//! must not fail because another write committed in between.
use rdm_tests::{Store, TestMesh};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_read_then_write_requests_all_succeed_on_sqlite() {
    let mesh = TestMesh::start(Store::Sqlite).await;
    let token = mesh.token("demo", "demo", "demo").await;
    let mut ids = Vec::new();
    for i in 0..24 {
        let (status, device) = mesh
            .post(
                "/v1/devices",
                &token,
                json!({"name": format!("c-{i}"), "address": "127.0.0.1"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        ids.push(device["id"].as_str().unwrap().to_owned());
    }
    let puts = ids.iter().enumerate().map(|(i, id)| {
        let (mesh, token) = (&mesh, &token);
        async move {
            let body = json!({"version": "2c", "community": format!("c{i}")});
            let put = mesh
                .call(
                    reqwest::Method::PUT,
                    &format!("/v1/devices/{id}/endpoints/snmp"),
                    Some(token),
                    Some(body),
                )
                .await;
            let patch = mesh
                .patch(
                    &format!("/v1/devices/{id}"),
                    token,
                    json!({"notes": format!("n{i}")}),
                )
                .await;
            (put.0, patch.0, put.1, patch.1)
        }
    });
    for (put, patch, put_body, patch_body) in futures::future::join_all(puts).await {
        assert_eq!(
            (put, patch),
            (StatusCode::OK, StatusCode::OK),
            "{put_body} {patch_body}"
        );
    }
}

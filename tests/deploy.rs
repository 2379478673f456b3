//! deploy/docker-compose.yml, checked as far as a machine without a Docker
//! engine allows: the instances' environment names only variables the
//! server reads, the server accepts that configuration (with deploy/
//! env.example's values), and nginx accepts the configuration the compose
//! file derives from deploy/nginx.conf.

use std::collections::HashMap;
use std::path::Path;

use chat_server::config::{is_known_variable, Settings};

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).expect(path)
}

/// `NAME=value` lines of deploy/env.example.
fn example_env() -> HashMap<String, String> {
    read("deploy/env.example")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Compose's `${VAR:-default}` / `${VAR:?message}` / `${VAR}`, from `env`;
/// `Err(VAR)` where `:?` stops compose (the variable unset or empty).
fn interpolate(value: &str, env: &HashMap<String, String>) -> Result<String, String> {
    let value = value.trim().trim_matches('"');
    let Some(inner) = value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) else {
        return Ok(value.to_string());
    };
    if let Some((name, _)) = inner.split_once(":?") {
        return match env.get(name) {
            Some(v) if !v.is_empty() => Ok(v.clone()),
            _ => Err(name.to_string()),
        };
    }
    let (name, default) = match inner.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (inner, None),
    };
    Ok(env
        .get(name)
        .cloned()
        .or(default.map(str::to_string))
        .unwrap_or_else(|| panic!("{name} has no value in deploy/env.example")))
}

/// The `environment:` of the `x-chat` block every instance uses, with
/// deploy/env.example's values and `overrides` (what an operator sets).
fn instance_environment(overrides: &[(&str, &str)]) -> Result<Vec<(String, String)>, String> {
    let compose = read("deploy/docker-compose.yml");
    let mut env = example_env();
    for (name, value) in overrides {
        env.insert(name.to_string(), value.to_string());
    }
    let block: Vec<&str> = compose
        .lines()
        .skip_while(|l| !l.starts_with("x-chat:"))
        .skip_while(|l| l.trim() != "environment:")
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .filter(|l| !l.trim().starts_with('#'))
        .collect();
    assert!(!block.is_empty(), "x-chat has an environment");
    block
        .iter()
        .map(|line| {
            let (key, value) = line.trim().split_once(':').expect("KEY: value");
            Ok((key.to_string(), interpolate(value, &env)?))
        })
        .collect()
}

#[test]
fn the_example_secret_key_is_empty_so_compose_refuses_to_start_without_one() {
    assert_eq!(
        example_env().get("SECRET_KEY").map(String::as_str),
        Some(""),
        "deploy/env.example publishes no key"
    );
    assert_eq!(instance_environment(&[]), Err("SECRET_KEY".to_string()));
    // The placeholder it used to carry is refused by the server itself.
    let placeholder = "change-me-to-a-long-random-string-of-32-bytes-or-more";
    let vars = instance_environment(&[("SECRET_KEY", placeholder)]).unwrap();
    let error = Settings::from_vars(vars)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(error.contains("placeholder"), "{error}");
}

/// A key as an operator makes one (`openssl rand -hex 32`).
const OPERATOR_KEY: &str = "9c4e1f7a2b8d3c6e0f5a1b7c2d9e4f3a8b6c0d1e7f2a5b9c3d8e6f0a4b1c7d2e";

#[test]
fn the_instances_configuration_is_one_the_server_reads_and_accepts() {
    let vars = instance_environment(&[("SECRET_KEY", OPERATOR_KEY)]).expect("compose starts");
    for (key, _) in &vars {
        assert!(
            is_known_variable(key),
            "{key} is not a variable the server reads"
        );
    }
    let settings = Settings::from_vars(vars.clone()).expect("the server accepts it");
    assert_eq!(settings.database.location(), "postgresql db:5432/chat");
    assert_eq!(settings.database.db_user.as_deref(), Some("chat"));
    assert_eq!(settings.redis.url().as_deref(), Some("redis://redis:6379/"));
    assert_eq!(settings.server.drain_seconds, 5);
    // The old backend's names, as the issue asks.
    for name in [
        "DB_ENGINE",
        "DB_NAME",
        "DB_USER",
        "DB_PASSWORD",
        "DB_HOST",
        "REDIS_HOST",
    ] {
        assert!(vars.iter().any(|(k, _)| k == name), "{name}");
    }
    let compose = read("deploy/docker-compose.yml");
    for name in ["POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD"] {
        assert!(compose.contains(&format!("{name}: ${{{name}")), "{name}");
    }
}

/// The instances believe `X-Forwarded-For` from nginx alone: one address,
/// nginx's own, not the network (whose gateway is the host).
#[test]
fn only_nginx_is_a_trusted_proxy() {
    let vars = instance_environment(&[("SECRET_KEY", OPERATOR_KEY)]).expect("compose starts");
    let trusted = vars
        .iter()
        .find(|(k, _)| k == "TRUSTED_PROXIES")
        .map(|(_, v)| v.clone())
        .expect("TRUSTED_PROXIES is set");
    let compose = read("deploy/docker-compose.yml");
    let nginx_address = compose
        .lines()
        .skip_while(|l| l.trim() != "nginx:")
        .find_map(|l| l.trim().strip_prefix("ipv4_address:"))
        .map(str::trim)
        .expect("nginx has a fixed address");
    assert_eq!(trusted, nginx_address);
    assert!(
        trusted.parse::<std::net::IpAddr>().is_ok(),
        "one address, not a range: {trusted}"
    );
}

/// The nginx configuration the compose file makes from deploy/nginx.conf
/// (its `sed`), with the container names resolved to loopback, passes
/// `nginx -t`. Needs nginx (CI installs it).
#[test]
#[ignore = "needs nginx on the PATH; run with --include-ignored"]
fn the_compose_nginx_configuration_passes_nginx_t() {
    let config = read("deploy/nginx.conf")
        .replace("127.0.0.1:8001", "chat1:8000")
        .replace("127.0.0.1:8002", "chat2:8000")
        .replace("listen 8080;", "listen 80;");
    let compose = read("deploy/docker-compose.yml");
    for edit in [
        "s/127.0.0.1:8001/chat1:8000/",
        "s/127.0.0.1:8002/chat2:8000/",
        "s/listen 8080;/listen 80;/",
    ] {
        assert!(
            compose.contains(edit),
            "the compose file still makes {edit}"
        );
    }
    // No Docker DNS here: the two names stand for loopback; the mounted
    // certificate is a self-signed one.
    let dir = tempfile::tempdir().unwrap();
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(dir.path().join("chat.key"))
        .arg("-out")
        .arg(dir.path().join("chat.crt"))
        .output()
        .expect("openssl on the PATH");
    assert!(made.status.success());
    assert!(compose.contains("./tls:/etc/nginx/tls:ro"));
    let checked = config
        .replace("chat1:8000", "127.0.0.1:8000")
        .replace("chat2:8000", "127.0.0.2:8000")
        .replace("/etc/nginx/tls/", &format!("{}/", dir.path().display()));
    let file = dir.path().join("nginx.conf");
    std::fs::write(&file, checked).unwrap();
    let prefix = dir.path().to_str().unwrap();
    let output = std::process::Command::new("nginx")
        .args(["-t", "-p", prefix, "-c", file.to_str().unwrap()])
        .args([
            "-g",
            &format!("pid {prefix}/nginx.pid; error_log {prefix}/error.log;"),
        ])
        .output()
        .expect("nginx on the PATH");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

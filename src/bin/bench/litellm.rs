//! LiteLLM's proxy as a peer row, in front of the same mock, when its venv
//! (`target/litellm-venv`, `pip install 'litellm[proxy]'`) exists or can be made.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::stack::Stack;
use super::{free_port, Children, MODEL, UPSTREAM_KEY};

pub(crate) const MASTER_KEY: &str = "sk-bench-master";

fn venv() -> PathBuf {
    super::repo_root().join("target/litellm-venv")
}

/// The `litellm` executable, installing it into the venv when missing.
pub(crate) fn ensure() -> Result<PathBuf> {
    let bin = venv().join("bin/litellm");
    if bin.is_file() {
        return Ok(bin);
    }
    println!("installing litellm[proxy] into {}", venv().display());
    let ok = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(venv())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        bail!("python3 -m venv failed");
    }
    let ok = Command::new(venv().join("bin/pip"))
        .args(["install", "-q", "litellm[proxy]"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok || !bin.is_file() {
        bail!("pip install 'litellm[proxy]' failed");
    }
    Ok(bin)
}

/// Starts `litellm --config …` routing `MODEL` to the mock; its base URL.
pub(crate) async fn start(children: &mut Children, stack: &Stack) -> Result<String> {
    let bin = ensure()?;
    let dir = stack.work.path().join("litellm");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "model_list:\n  - model_name: {MODEL}\n    litellm_params:\n      model: openai/{MODEL}\n      \
             api_base: {}/v1\n      api_key: {UPSTREAM_KEY}\n\
             general_settings:\n  master_key: {MASTER_KEY}\n\
             litellm_settings:\n  set_verbose: false\n  telemetry: false\n",
            stack.mock_base
        ),
    )?;
    let port = free_port()?;
    let mut command = Command::new(&bin);
    command
        .arg("--config")
        .arg(&config)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--num_workers",
            "1",
        ])
        .env_remove("DATABASE_URL")
        .env("LITELLM_LOG", "ERROR")
        .current_dir(&dir);
    children.spawn("litellm", command, dir.join("litellm.log"))?;
    let base = format!("http://127.0.0.1:{port}");
    super::wait_ready(
        &stack.client,
        &format!("{base}/health/liveliness"),
        children,
    )
    .await
    .context("LiteLLM did not become ready")?;
    // One real request, so that a route that cannot work fails here.
    let response = stack
        .client
        .post(format!("{base}/v1/responses"))
        .bearer_auth(MASTER_KEY)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(serde_json::json!({"model": MODEL, "input": "Benchmark"}).to_string())
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "LiteLLM /v1/responses answered {status}: {}",
            text.chars().take(400).collect::<String>()
        );
    }
    Ok(base)
}

//! The AWS shared files (`~/.aws/credentials`, `~/.aws/config`) for what the environment leaves
//! unset: object_store's `AmazonS3Builder::from_env` reads only environment variables, while
//! teammates usually keep their keys in these files (`aws configure`).
//!
//! Precedence, as the AWS CLI and SDKs: environment variables first, then the profile
//! `AWS_PROFILE` (else `default`) of `AWS_SHARED_CREDENTIALS_FILE` (else
//! `~/.aws/credentials`: `[NAME]`) and of `AWS_CONFIG_FILE` (else `~/.aws/config`:
//! `[profile NAME]`, or `[default]`). Credentials are taken as a set: file credentials are used
//! only when the environment has no `AWS_ACCESS_KEY_ID`. Read: `aws_access_key_id`,
//! `aws_secret_access_key`, `aws_session_token`, `region` and `endpoint_url`. Role assumption,
//! SSO and credential processes in these files are not followed.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// What the shared files add to the environment: `(AWS_* variable, value)` pairs, each for a
/// variable the environment does not set.
pub fn settings_from_files(env: &dyn Fn(&str) -> Option<String>) -> Vec<(&'static str, String)> {
    let home = env("HOME").map(PathBuf::from);
    let file = |var: &str, default: &str| -> Option<String> {
        let path =
            env(var).map(PathBuf::from).or_else(|| home.as_ref().map(|h| h.join(default)))?;
        std::fs::read_to_string(path).ok()
    };
    let credentials = file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials").unwrap_or_default();
    let config = file("AWS_CONFIG_FILE", ".aws/config").unwrap_or_default();
    merge(env, &credentials, &config)
}

/// [`settings_from_files`] on the files' texts.
fn merge(
    env: &dyn Fn(&str) -> Option<String>,
    credentials: &str,
    config: &str,
) -> Vec<(&'static str, String)> {
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let credentials = parse_ini(credentials);
    let config = parse_ini(config);
    let config_section = if profile == "default" {
        config.get("default").or_else(|| config.get("profile default"))
    } else {
        config.get(&format!("profile {profile}"))
    };
    // A key set in either file (credentials file first, as the CLI does).
    let get = |key: &str| -> Option<String> {
        credentials
            .get(&profile)
            .and_then(|s| s.get(key))
            .or_else(|| config_section.and_then(|s| s.get(key)))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let mut out = Vec::new();
    if env("AWS_ACCESS_KEY_ID").is_none() {
        for (var, key) in [
            ("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
            ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
            ("AWS_SESSION_TOKEN", "aws_session_token"),
        ] {
            if let Some(value) = get(key) {
                out.push((var, value));
            }
        }
    }
    if env("AWS_REGION").is_none()
        && env("AWS_DEFAULT_REGION").is_none()
        && let Some(region) = get("region")
    {
        out.push(("AWS_REGION", region));
    }
    let endpoint_set = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT", "AWS_ENDPOINT_URL_S3"]
        .iter()
        .any(|v| env(v).is_some());
    if !endpoint_set && let Some(endpoint) = get("endpoint_url") {
        out.push(("AWS_ENDPOINT_URL", endpoint));
    }
    out
}

/// `[section]` headers and `key = value` lines; `#` and `;` start comments; indented lines
/// (sub-settings such as `s3 =` blocks) are skipped.
fn parse_ini(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut section: Option<String> = None;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
            out.entry(name.clone()).or_default();
            section = Some(name);
        } else if let (Some(name), Some((key, value))) = (&section, line.split_once('=')) {
            out.entry(name.clone())
                .or_default()
                .insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;

    const CREDENTIALS: &str = "\
[default]
aws_access_key_id = AKIADEFAULT
aws_secret_access_key = secret-default

[team]
aws_access_key_id=AKIATEAM
aws_secret_access_key=secret-team
aws_session_token = token-team
";

    const CONFIG: &str = "\
# comment
[default]
region = eu-west-1

[profile team]
region = us-west-2
endpoint_url = https://s3.example.com
s3 =
  addressing_style = path
";

    fn check(env: &[(&str, &str)], expect: Expect) {
        let lookup =
            |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned());
        let got = merge(&lookup, CREDENTIALS, CONFIG);
        let shown: Vec<String> = got.iter().map(|(k, v)| format!("{k}={v}")).collect();
        expect.assert_eq(&shown.join(" "));
    }

    #[test]
    fn the_profile_fills_what_the_environment_leaves_unset() {
        check(
            &[],
            expect![
                "AWS_ACCESS_KEY_ID=AKIADEFAULT AWS_SECRET_ACCESS_KEY=secret-default AWS_REGION=eu-west-1"
            ],
        );
        check(
            &[("AWS_PROFILE", "team")],
            expect![
                "AWS_ACCESS_KEY_ID=AKIATEAM AWS_SECRET_ACCESS_KEY=secret-team AWS_SESSION_TOKEN=token-team AWS_REGION=us-west-2 AWS_ENDPOINT_URL=https://s3.example.com"
            ],
        );
    }

    #[test]
    fn the_environment_wins_and_credentials_are_a_set() {
        // Keys in the environment: none of the file's credentials mix in (no stray token).
        check(
            &[("AWS_PROFILE", "team"), ("AWS_ACCESS_KEY_ID", "AKIAENV")],
            expect!["AWS_REGION=us-west-2 AWS_ENDPOINT_URL=https://s3.example.com"],
        );
        check(
            &[
                ("AWS_PROFILE", "team"),
                ("AWS_ACCESS_KEY_ID", "AKIAENV"),
                ("AWS_DEFAULT_REGION", "ap-south-1"),
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:8333"),
            ],
            expect![""],
        );
        check(&[("AWS_PROFILE", "nobody")], expect![""]);
    }
}

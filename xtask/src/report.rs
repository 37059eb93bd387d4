//! The pipeline report: `report.md` and `report.html` in the run folder, built only from what
//! the stages of this run recorded (`stage.json`, `metrics.json`, plots).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

/// Chollet's figures on real cats vs dogs (DESIGN.md §3; *Deep Learning with Python* 5.2 for the
/// convnet from scratch), shown beside ours.
const SEED_REFERENCE: &[(&str, &str)] = &[
    ("head", "~90% validation (cached features, no augmentation)"),
    ("head-augmented", "~90-96% validation (end to end with augmentation in the book)"),
    ("fine-tune", "~97% test (block5 fine-tuned, 100 epochs on augmented images)"),
    ("scratch", "~71% validation, ~82% with augmentation and dropout (small convnet, 2,000 images)"),
];

/// The approaches in report order: stage folder and what it is (`{base}`: the transferred base).
const APPROACHES: &[(&str, &str)] = &[
    ("pretrain", "the pretrained base on its own task (trained from scratch on the pretraining data)"),
    ("head", "dense head on cached features of {base}"),
    ("head-augmented", "dense head on cached augmented passes of {base}"),
    ("fine-tune", "{base} fine-tuned with the head"),
    ("scratch", "small convnet trained from scratch on this dataset only"),
];

/// What the report says about the run beyond its stages' records.
pub struct Context<'a> {
    /// Resolved settings, listed under Settings.
    pub settings: BTreeMap<String, String>,
    /// The base that is transferred (`ImageNet VGG16`, `MNIST-pretrained small convnet`).
    pub base: String,
    /// Another run whose accuracies are shown beside this one's (the default ImageNet run for the
    /// homework), when it exists.
    pub compare_with: Option<(String, &'a Path)>,
}

/// `| label | validation | test | reference |` rows for every approach `run_dir` has metrics for.
fn accuracy_rows(md: &mut String, run_dir: &Path, base: &str, prefix: &str) -> Result<()> {
    for &(stage, label) in APPROACHES {
        let Ok(m) = run_folder::read_json::<serde_json::Value>(&run_dir.join(stage).join("metrics.json")) else { continue };
        let pct = |split: &str| m[split]["acc"].as_f64().map_or("-".into(), |a| format!("{:.2}%", 100.0 * a));
        let reference = SEED_REFERENCE.iter().find(|(s, _)| *s == stage).map_or("", |(_, r)| r);
        let label = label.replace("{base}", base);
        writeln!(md, "| {prefix}{label} | {} | {} | {reference} |", pct("validation"), pct("test"))?;
    }
    Ok(())
}

pub fn write(run_dir: &Path, context: &Context, timings: &[(&str, f64, bool)]) -> Result<()> {
    let mut md = String::new();
    let name = run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    writeln!(md, "# Transfer-learning run `{name}`\n")?;

    writeln!(md, "## Accuracy\n")?;
    writeln!(md, "| approach | validation acc | test acc | seed reference (cats vs dogs) |")?;
    writeln!(md, "| --- | --- | --- | --- |")?;
    accuracy_rows(&mut md, run_dir, &context.base, "")?;
    if let Some((base, other)) = &context.compare_with {
        let other_name = other.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        accuracy_rows(&mut md, other, base, &format!("run `{other_name}`: "))?;
    }
    writeln!(md, "\nThe demo data is Fashion-MNIST shirt vs t-shirt/top (28x28 grayscale, upscaled), a much harder")?;
    writeln!(md, "pair for ImageNet features than cats vs dogs; the seed's figures are the book's, for orientation.\n")?;

    writeln!(md, "## Stages\n")?;
    writeln!(md, "| stage | this run | recorded time | facts |")?;
    writeln!(md, "| --- | --- | --- | --- |")?;
    for (stage, seconds, skipped) in timings {
        let record = run_folder::StageRecord::read(&run_dir.join(stage)).ok();
        let recorded = record
            .as_ref()
            .map_or("-".into(), |r| format!("{:.1}s", r.seconds));
        let facts = record
            .as_ref()
            .map_or(String::new(), |r| summary_text(&r.summary));
        let now = if *skipped {
            "up to date, verified".to_owned()
        } else {
            format!("ran, {seconds:.1}s")
        };
        writeln!(md, "| {stage} | {now} | {recorded} | {facts} |")?;
    }

    writeln!(md, "\n## Settings\n")?;
    for (k, v) in &context.settings {
        writeln!(md, "- {k}: `{v}`")?;
    }

    for &(stage, _) in APPROACHES {
        let dir = run_dir.join(stage);
        if !dir.join("accuracy.png").exists() {
            continue;
        }
        writeln!(md, "\n## {stage}\n")?;
        for plot in [
            "accuracy.png",
            "loss.png",
            "accuracy_smoothed.png",
            "loss_smoothed.png",
            "confusion_test.png",
        ] {
            if dir.join(plot).exists() {
                writeln!(md, "![{stage} {plot}]({stage}/{plot})")?;
            }
        }
    }

    run_folder::write_atomic(&run_dir.join("report.md"), md.as_bytes())?;
    let mut body = String::new();
    let options = pulldown_cmark::Options::ENABLE_TABLES;
    pulldown_cmark::html::push_html(&mut body, pulldown_cmark::Parser::new_ext(&md, options));
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>run {name}</title>\n<style>\
         body{{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em}}\
         img{{max-width:48%;margin:.2em}}</style></head><body>\n{body}</body></html>\n"
    );
    run_folder::write_atomic(&run_dir.join("report.html"), html.as_bytes())?;
    Ok(())
}

fn summary_text(summary: &serde_json::Value) -> String {
    let Some(map) = summary.as_object() else {
        return String::new();
    };
    map.iter()
        .filter(|(_, v)| !v.is_null() && !v.is_array())
        .map(|(k, v)| match v.as_f64() {
            Some(f) if f.fract() != 0.0 => format!("{k} {f:.3}"),
            _ => format!("{k} {}", v.to_string().trim_matches('"')),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

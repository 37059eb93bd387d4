//! The pipeline report: `report.md` and `report.html` in the run folder, built only from what
//! the stages of this run recorded (`dataset/dataset.json`, `stage.json`, `metrics.json`, plots).
//! Both records are read through their typed schemas (`run_folder::DatasetRecord`,
//! `run_folder::StageMetrics`), so a renamed field is a compile error here, not a blank cell;
//! everything the report says about the data comes from the dataset record.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use run_folder::{DatasetRecord, StageMetrics};

/// Chollet's figures on real cats vs dogs (DESIGN.md §3; *Deep Learning with Python* 5.2 for the
/// convnet from scratch), shown beside ours.
const SEED_REFERENCE: &[(&str, &str)] = &[
    ("head", "~90% validation (cached features, no augmentation)"),
    ("head-augmented", "~90-96% validation (end to end with augmentation in the book)"),
    ("fine-tune", "~97% test (block5 fine-tuned, 100 epochs on augmented images)"),
    (
        "scratch",
        "~71% validation, ~82% with augmentation and dropout (small convnet, 2,000 images)",
    ),
];

/// The approaches in report order: stage folder and what it is (`{base}`: the transferred base).
const APPROACHES: &[(&str, &str)] = &[
    (
        "pretrain",
        "the pretrained base on its own task (trained from scratch on the pretraining data)",
    ),
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
    /// Side of the square images the networks see, in pixels.
    pub input_size: u32,
    /// Another run whose accuracies are shown beside this one's, only if its dataset record has
    /// this run's digest: accuracies on other data are not comparable.
    pub compare_with: Option<Compared<'a>>,
    /// Where the release binaries are, as the "use the model" commands spell it (relative to
    /// the repository root when inside it).
    pub binaries: String,
    /// The dataset root, as the "use the model" commands spell it.
    pub data: String,
}

/// The run a report sets beside its own (`[compare]`).
pub struct Compared<'a> {
    /// The base it transferred, for its row labels.
    pub base: String,
    pub dir: &'a Path,
    /// The stages its last pipeline run planned: folders of other stages are left from earlier
    /// runs with other settings or data and are not reported.
    pub stages: Vec<String>,
}

/// `text` safe inside a Markdown table cell and as HTML: markup characters escaped.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('|', "\\|")
}

/// The `dataset` stage's record of a run, if it has one.
fn dataset_record(run_dir: &Path) -> Option<DatasetRecord> {
    run_folder::read_json(&run_dir.join("dataset").join(run_folder::DATASET_FILE)).ok()
}

/// `## Dataset`: name, description, classes, counts, sizes and formats per split, all from the
/// record; and, for the seed's figures, how this data differs from the book's.
fn dataset_section(md: &mut String, record: &DatasetRecord, input_size: u32) -> Result<()> {
    writeln!(md, "## Dataset\n")?;
    writeln!(
        md,
        "**{}** (`{}`, digest `{}`)\n",
        record.name,
        record.root.display(),
        &record.digest[..record.digest.len().min(12)]
    )?;
    if let Some(description) = &record.description {
        writeln!(md, "> {}\n", escape(description))?;
    }
    let classes: Vec<String> =
        record.classes.iter().enumerate().map(|(i, c)| format!("{} = {i}", escape(c))).collect();
    writeln!(md, "Classes (index order): {}.\n", classes.join(", "))?;
    write!(md, "| split |")?;
    for class in &record.classes {
        write!(md, " {} |", escape(class))?;
    }
    writeln!(md, " total | image sizes | formats | left out |")?;
    writeln!(md, "|{}", " --- |".repeat(record.classes.len() + 5))?;
    let tally = |m: &BTreeMap<String, usize>| {
        m.iter().map(|(k, n)| format!("{k} ({n})")).collect::<Vec<_>>().join(", ")
    };
    for split in &record.splits {
        write!(md, "| {} |", split.name)?;
        for n in &split.counts {
            write!(md, " {n} |")?;
        }
        writeln!(
            md,
            " {} | {} | {} | {} |",
            split.images(),
            tally(&split.sizes),
            tally(&split.formats),
            split.omitted
        )?;
    }
    writeln!(md)?;
    writeln!(md, "{}\n", seed_comparison(record, input_size))?;
    Ok(())
}

/// Why the seed's reference figures need not match this run: the book trained on 2,000 Kaggle
/// photos of cats and dogs (a few hundred pixels a side, resized to 150x150, 1,000 / 500 / 500
/// per class); what differs here is read off the record.
fn seed_comparison(record: &DatasetRecord, input_size: u32) -> String {
    let mut differences = Vec::new();
    let classes: Vec<&str> = record.classes.iter().map(String::as_str).collect();
    if !matches!(classes.as_slice(), ["cat" | "cats", "dog" | "dogs"]) {
        differences.push(format!(
            "another task ({} classes: {})",
            classes.len(),
            classes.join(", ")
        ));
    }
    if let Some(train) = record.split("train").map(|s| s.images()).filter(|&n| n != 2000) {
        differences.push(format!("{train} training images instead of 2,000"));
    }
    if let Some((size, _)) = record.sizes().first() {
        let side = size.split('x').filter_map(|v| v.parse::<u32>().ok()).max().unwrap_or(0);
        if side > 0 && side < input_size {
            differences.push(format!("{size} images upscaled to {input_size}x{input_size} where the book's photos are several hundred pixels a side"));
        } else if input_size != 150 {
            differences.push(format!(
                "{size} images resized to {input_size}x{input_size} instead of 150x150"
            ));
        }
    }
    if differences.is_empty() {
        "The seed's reference figures are Chollet's on 2,000 cats-vs-dogs photos; this dataset has the same shape.".into()
    } else {
        format!(
            "The seed's reference figures are Chollet's on 2,000 cats-vs-dogs photos resized to 150x150; this run differs: {}.",
            differences.join("; ")
        )
    }
}

/// `| label | validation | test | reference |` rows for every planned approach `run_dir` has
/// metrics for; a `metrics.json` that does not read as [`StageMetrics`] gives a row of `-` and a
/// line in `problems`.
fn accuracy_rows(
    md: &mut String,
    problems: &mut Vec<String>,
    run_dir: &Path,
    stages: &[String],
    base: &str,
    prefix: &str,
) -> Result<()> {
    for &(stage, label) in APPROACHES {
        let dir = run_dir.join(stage);
        if !stages.iter().any(|s| s == stage) || !dir.join(run_folder::METRICS_FILE).exists() {
            continue;
        }
        let pct = |acc: Option<f64>| acc.map_or("-".into(), |a| format!("{:.2}%", 100.0 * a));
        let (validation, test) = match StageMetrics::read(&dir) {
            Ok(m) => (pct(Some(m.validation.acc)), pct(m.test.map(|t| t.acc))),
            Err(err) => {
                problems.push(format!("{prefix}{stage}: {}", escape(&err.to_string())));
                (pct(None), pct(None))
            }
        };
        let reference = SEED_REFERENCE.iter().find(|(s, _)| *s == stage).map_or("", |(_, r)| r);
        let label = label.replace("{base}", base);
        writeln!(md, "| {prefix}{label} | {validation} | {test} | {reference} |")?;
    }
    Ok(())
}

pub fn write(run_dir: &Path, context: &Context, timings: &[(&str, f64, bool)]) -> Result<()> {
    let mut md = String::new();
    let name = run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    writeln!(md, "# Transfer-learning run `{name}`\n")?;

    let record = dataset_record(run_dir);
    writeln!(md, "## Accuracy\n")?;
    writeln!(md, "| approach | validation acc | test acc | seed reference (cats vs dogs) |")?;
    writeln!(md, "| --- | --- | --- | --- |")?;
    let planned: Vec<String> = timings.iter().map(|t| t.0.to_owned()).collect();
    let mut problems = Vec::new();
    accuracy_rows(&mut md, &mut problems, run_dir, &planned, &context.base, "")?;
    let mut not_compared = None;
    if let Some(Compared { base, dir: other, stages }) = &context.compare_with {
        let other_name =
            other.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let other_record = dataset_record(other);
        match (&record, &other_record) {
            (Some(a), Some(b)) if a.digest == b.digest => accuracy_rows(
                &mut md,
                &mut problems,
                other,
                stages,
                base,
                &format!("run `{other_name}`: "),
            )?,
            (_, Some(b)) => {
                not_compared = Some(format!(
                    "Run `{other_name}` is not set beside this one: it trained on {} (digest `{}`), not on this run's data.",
                    b.name,
                    &b.digest[..b.digest.len().min(12)]
                ))
            }
            (_, None) => {
                not_compared = Some(format!(
                    "Run `{other_name}` is not set beside this one: it has no dataset record, so it cannot be shown to have used the same data."
                ))
            }
        }
    }
    writeln!(md)?;
    for problem in &problems {
        writeln!(md, "Unreadable metrics, {problem}\n")?;
    }
    if let Some(why) = not_compared {
        writeln!(md, "{why}\n")?;
    }
    comparison_chart(&mut md, run_dir, &planned)?;
    use_the_model(&mut md, run_dir, context)?;
    if let Some(record) = &record {
        dataset_section(&mut md, record, context.input_size)?;
    }

    writeln!(md, "## Stages\n")?;
    writeln!(md, "| stage | this run | recorded time | facts |")?;
    writeln!(md, "| --- | --- | --- | --- |")?;
    for (stage, seconds, skipped) in timings {
        let record = run_folder::StageRecord::read(&run_dir.join(stage)).ok();
        let recorded = record.as_ref().map_or("-".into(), |r| format!("{:.1}s", r.seconds));
        let facts = record.as_ref().map_or(String::new(), |r| summary_text(&r.summary));
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
        if !planned.iter().any(|s| s == stage) || !dir.join("accuracy.png").exists() {
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

/// The file of [`comparison_chart`], in the run folder.
pub const COMPARISON_CHART: &str = "val_acc_by_epoch.png";

/// One chart with every planned approach's validation accuracy by epoch (from its
/// `history.csv`; the pretraining stage, on another task, is left out), so the seed's comparison
/// of approaches is one picture. Nothing when no approach has a history.
fn comparison_chart(md: &mut String, run_dir: &Path, planned: &[String]) -> Result<()> {
    let series: Vec<(String, Vec<(usize, f64)>)> = APPROACHES
        .iter()
        .filter(|(stage, _)| *stage != "pretrain" && planned.iter().any(|s| s == stage))
        .filter_map(|(stage, _)| {
            let history =
                run_folder::read_history(&run_dir.join(stage).join(run_folder::HISTORY_FILE))
                    .ok()?;
            Some(((*stage).to_owned(), history.iter().map(|r| (r.epoch, r.val_acc)).collect()))
        })
        .collect();
    if series.is_empty() {
        return Ok(());
    }
    plots::plot_comparison(
        &run_dir.join(COMPARISON_CHART),
        "Validation accuracy by epoch, every approach",
        "val_acc",
        &series,
    )?;
    writeln!(
        md,
        "## Validation accuracy by epoch
"
    )?;
    writeln!(
        md,
        "![validation accuracy of every approach by epoch]({COMPARISON_CHART})
"
    )?;
    Ok(())
}

/// How the `evaluate` stage's config names the model it evaluated.
#[derive(serde::Deserialize)]
struct EvaluatedModel {
    model: std::path::PathBuf,
}

/// "Use the model": the best model (the one the `evaluate` stage evaluated, as its
/// `config.json` and `stage.json` record it), its test figures, the exact commands that apply
/// it, and the top-losses grid. Nothing when the run has no `evaluate` stage.
fn use_the_model(md: &mut String, run_dir: &Path, context: &Context) -> Result<()> {
    let dir = run_dir.join("evaluate");
    let (Ok(record), Ok(config)) = (
        run_folder::StageRecord::read(&dir),
        run_folder::read_json::<EvaluatedModel>(&dir.join(run_folder::CONFIG_FILE)),
    ) else {
        return Ok(());
    };
    let root = crate::workspace_root();
    let model = config.model.strip_prefix(&root).unwrap_or(&config.model).display().to_string();
    let stage = record.summary["model_stage"].as_str().unwrap_or("?").to_owned();
    let pct =
        |v: &serde_json::Value| v.as_f64().map_or("-".into(), |a| format!("{:.2}%", 100.0 * a));
    writeln!(
        md,
        "## Use the model
"
    )?;
    writeln!(
        md,
        "The best model of this run by validation accuracy is the `{stage}` stage's, `{model}` \
         (test accuracy {} on {} images, measured by `evaluate` from the model file alone). \
         It needs nothing else: the file holds the network, the class names and the \
         preprocessing.\n",
        pct(&record.summary["test_acc"]),
        record.summary["images"]
    )?;
    let bin = &context.binaries;
    writeln!(md, "```sh")?;
    writeln!(md, "# classify photos (CSV: path, predicted class, one probability per class)")?;
    writeln!(md, "{bin}/predict --model {model} path/to/photo.jpg path/to/folder/")?;
    writeln!(md, "# accuracy, confusion matrix, per-class figures and top losses on a split")?;
    writeln!(md, "{bin}/evaluate --model {model} --data {} --split test", context.data)?;
    writeln!(md, "# the whole classifier as ONNX (input: RGB 0-255 float32 NCHW)")?;
    writeln!(md, "{bin}/export --format onnx --model {model} --out model.onnx")?;
    writeln!(md, "# Grad-CAM heatmaps over the photos")?;
    writeln!(md, "{bin}/explain --model {model} path/to/photo.jpg --out heatmaps/")?;
    writeln!(md, "```\n")?;
    if dir.join("top_losses.png").exists() {
        writeln!(md, "The test images it got most confidently wrong:\n")?;
        writeln!(md, "![top losses](evaluate/top_losses.png)\n")?;
    }
    if run_dir.join("explain").join("gradcam_grid.png").exists() {
        writeln!(
            md,
            "Grad-CAM (Chollet 5.4.3): where the last conv layer found evidence for the \
             predicted class, on the first test images of each class:\n"
        )?;
        writeln!(md, "![Grad-CAM heatmaps](explain/gradcam_grid.png)\n")?;
    }
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

#[cfg(test)]
mod tests {
    use run_folder::{KeptEpoch, SplitMetrics};

    use super::*;

    /// A dataset record: `name`, its description, `classes`, `train_per_class` training images
    /// per class (250 in validation and test), 32x32 PNGs.
    fn record(name: &str, digest: &str, classes: &[&str], train_per_class: usize) -> DatasetRecord {
        DatasetRecord {
            name: name.into(),
            root: format!("/data/{name}").into(),
            description: Some(format!("Small photos of {name}.")),
            digest: digest.into(),
            classes: classes.iter().map(|c| (*c).to_owned()).collect(),
            splits: ["train", "validation", "test"]
                .iter()
                .zip([train_per_class, 250, 250])
                .map(|(name, n)| run_folder::SplitRecord {
                    name: (*name).into(),
                    counts: vec![n; classes.len()],
                    sizes: BTreeMap::from([("32x32".to_owned(), n * classes.len())]),
                    formats: BTreeMap::from([("png".to_owned(), n * classes.len())]),
                    bytes: 1000,
                    omitted: 0,
                })
                .collect(),
        }
    }

    /// `metrics.json` as the training stages write it: 80% validation accuracy, `test_acc` on
    /// the test split when there is one.
    fn metrics(test_acc: Option<f64>) -> StageMetrics {
        let split =
            |acc| SplitMetrics { loss: 0.5, acc, images: 500, source: None, per_class: vec![] };
        StageMetrics {
            validation: split(0.8),
            test: test_acc.map(split),
            kept: KeptEpoch { epoch: 3, of: 5, val_loss: 0.5, val_acc: 0.8 },
            median_epoch_seconds: 1.0,
        }
    }

    /// A run folder with a dataset record and the head stage's metrics.
    fn fixture_run(dir: &Path, record: &DatasetRecord, test_acc: Option<f64>) {
        run_folder::write_json(&dir.join("dataset").join(run_folder::DATASET_FILE), record)
            .unwrap();
        metrics(test_acc).write(&dir.join("head")).unwrap();
    }

    fn pets(digest: &str, test_acc: f64) -> (DatasetRecord, Option<f64>) {
        (record("pets", digest, &["cats", "dogs"], 500), Some(test_acc))
    }

    fn render(run: &Path, other: Option<&Path>) -> String {
        let stages = vec!["dataset".to_owned(), "head".to_owned()];
        let context = Context {
            settings: BTreeMap::new(),
            base: "ImageNet VGG16".into(),
            input_size: 64,
            compare_with: other.map(|dir| Compared {
                base: "small convnet".into(),
                dir,
                stages: stages.clone(),
            }),
            binaries: "target/release".into(),
            data: "data/pets".into(),
        };
        write(run, &context, &[("dataset", 1.0, false), ("head", 1.0, false)]).unwrap();
        std::fs::read_to_string(run.join("report.md")).unwrap()
    }

    #[test]
    fn use_the_model_names_the_evaluated_model_and_the_chart_has_every_history() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        let (record, acc) = pets("abc", 0.8);
        fixture_run(run, &record, acc);
        let history = |acc: f64| {
            (1..=3)
                .map(|epoch| run_folder::EpochRecord {
                    epoch,
                    loss: 0.5,
                    acc,
                    val_loss: 0.5,
                    val_acc: acc + 0.01 * epoch as f64,
                    lr: 1e-3,
                    seconds: 1.0,
                })
                .collect::<Vec<_>>()
        };
        run_folder::write_history(&run.join("head").join(run_folder::HISTORY_FILE), &history(0.7))
            .unwrap();
        // Without an evaluate stage: the chart, and no "use the model" section.
        let md = render(run, None);
        assert!(run.join(COMPARISON_CHART).exists());
        assert!(md.contains(&format!("]({COMPARISON_CHART})")), "{md}");
        assert!(section(&md, "Use the model").is_empty(), "{md}");

        // With one: its model, figures and the exact commands.
        let eval = run.join("evaluate");
        let model = run.join("head").join("model.safetensors");
        run_folder::write_json(
            &eval.join(run_folder::CONFIG_FILE),
            &serde_json::json!({"model": model, "data": "x"}),
        )
        .unwrap();
        run_folder::StageRecord::write(
            &eval,
            "evaluate",
            "0".into(),
            BTreeMap::new(),
            &[],
            1.0,
            serde_json::json!({"test_acc": 0.8125, "images": 16, "model_stage": "head"}),
        )
        .unwrap();
        let md = render(run, None);
        let lines = section(&md, "Use the model").join("\n");
        assert!(lines.contains("`head` stage") && lines.contains("81.25%"), "{lines}");
        let model = model.display().to_string();
        assert!(lines.contains(&format!("target/release/predict --model {model} ")), "{lines}");
        assert!(lines.contains("--data data/pets --split test"), "{lines}");
    }

    /// The lines of the section `## title`, up to the next section.
    fn section<'a>(md: &'a str, title: &str) -> Vec<&'a str> {
        let heading = format!("## {title}");
        md.lines()
            .skip_while(|l| *l != heading)
            .skip(1)
            .take_while(|l| !l.starts_with("## "))
            .filter(|l| !l.is_empty())
            .collect()
    }

    #[test]
    fn tables_are_rendered_from_the_typed_records() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let (pets, test_acc) = pets("aaaa", 0.77);
        fixture_run(&run, &pets, test_acc);
        let md = render(&run, None);
        expect_test::expect![[r#"
            | approach | validation acc | test acc | seed reference (cats vs dogs) |
            | --- | --- | --- | --- |
            | dense head on cached features of ImageNet VGG16 | 80.00% | 77.00% | ~90% validation (cached features, no augmentation) |"#]]
        .assert_eq(&section(&md, "Accuracy").join("\n"));
        expect_test::expect![[r#"
            **pets** (`/data/pets`, digest `aaaa`)
            > Small photos of pets.
            Classes (index order): cats = 0, dogs = 1.
            | split | cats | dogs | total | image sizes | formats | left out |
            | --- | --- | --- | --- | --- | --- | --- |
            | train | 500 | 500 | 1000 | 32x32 (1000) | png (1000) | 0 |
            | validation | 250 | 250 | 500 | 32x32 (500) | png (500) | 0 |
            | test | 250 | 250 | 500 | 32x32 (500) | png (500) | 0 |
            The seed's reference figures are Chollet's on 2,000 cats-vs-dogs photos resized to 150x150; this run differs: 1000 training images instead of 2,000; 32x32 images upscaled to 64x64 where the book's photos are several hundred pixels a side."#]]
        .assert_eq(&section(&md, "Dataset").join("\n"));
        expect_test::expect![[r#"
            | stage | this run | recorded time | facts |
            | --- | --- | --- | --- |
            | dataset | ran, 1.0s | - |  |
            | head | ran, 1.0s | - |  |"#]]
        .assert_eq(&section(&md, "Stages").join("\n"));

        // No test split: its cell is `-`, the row stays.
        metrics(None).write(&run.join("head")).unwrap();
        let md = render(&run, None);
        assert!(md.contains("| dense head on cached features of ImageNet VGG16 | 80.00% | - |"));
    }

    /// Every line of the Dataset section but its heading changes with the record: nothing in it
    /// is a fixed sentence about some dataset.
    #[test]
    fn dataset_is_described_only_from_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fixture_run(&a, &record("pets", "aaaa", &["cats", "dogs"], 1000), Some(0.7));
        fixture_run(&b, &record("clothes", "bbbb", &["shirt", "shoe", "sock"], 300), Some(0.7));
        let (md_a, md_b) = (render(&a, None), render(&b, None));
        let (section_a, section_b) = (section(&md_a, "Dataset"), section(&md_b, "Dataset"));
        assert_eq!(section_a.len(), section_b.len());
        for (la, lb) in section_a.iter().zip(&section_b) {
            assert_ne!(la, lb, "a line that does not come from the record");
        }
        assert!(
            section_b.iter().any(|l| l.contains("another task (3 classes: shirt, shoe, sock)"))
        );
        assert!(section_b.iter().any(|l| l.contains("900 training images instead of 2,000")));
        assert!(!md_b.contains("pets") && !md_a.contains("clothes"));

        // Markup in a dataset's own words stays text.
        fixture_run(&a, &record("pets", "aaaa", &["c|a", "<b>"], 500), Some(0.7));
        let md = render(&a, None);
        assert!(
            md.contains("| train | 500 | 500 |") && md.contains("| split | c\\|a | &lt;b&gt; |"),
            "{md}"
        );
    }

    /// A `metrics.json` of another shape (an older stage's) is named, not a blank cell.
    #[test]
    fn unreadable_metrics_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let (pets, test_acc) = pets("aaaa", 0.77);
        fixture_run(&run, &pets, test_acc);
        run_folder::write_json(
            &run.join("head").join(run_folder::METRICS_FILE),
            &serde_json::json!({ "validation": { "acc": 0.5 } }),
        )
        .unwrap();
        let md = render(&run, None);
        assert!(md.contains("| dense head on cached features of ImageNet VGG16 | - | - |"), "{md}");
        assert!(md.contains("Unreadable metrics, head: ") && md.contains("metrics.json"), "{md}");
    }

    /// A stage folder left from an earlier run with other settings (here `scratch`, not in this
    /// run's plan) is not reported, in this run or in a compared one.
    #[test]
    fn only_the_planned_stages_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (run, other) = (dir.path().join("run"), dir.path().join("other"));
        let ((a, a_test), (b, b_test)) = (pets("same", 0.77), pets("same", 0.61));
        fixture_run(&run, &a, a_test);
        fixture_run(&other, &b, b_test);
        for r in [&run, &other] {
            metrics(Some(0.5)).write(&r.join("scratch")).unwrap();
        }
        let md = render(&run, Some(&other));
        assert!(md.contains("61.00%") && !md.contains("50.00%"), "{md}");
    }

    #[test]
    fn another_run_is_set_beside_only_on_the_same_data() {
        let dir = tempfile::tempdir().unwrap();
        let (run, other) = (dir.path().join("run"), dir.path().join("other"));
        let ((a, a_test), (b, b_test)) = (pets("same", 0.77), pets("same", 0.61));
        fixture_run(&run, &a, a_test);
        fixture_run(&other, &b, b_test);
        let md = render(&run, Some(&other));
        expect_test::expect![[r#"
            | approach | validation acc | test acc | seed reference (cats vs dogs) |
            | --- | --- | --- | --- |
            | dense head on cached features of ImageNet VGG16 | 80.00% | 77.00% | ~90% validation (cached features, no augmentation) |
            | run `other`: dense head on cached features of small convnet | 80.00% | 61.00% | ~90% validation (cached features, no augmentation) |"#]]
        .assert_eq(&section(&md, "Accuracy").join("\n"));

        let (b, b_test) = pets("different", 0.61);
        fixture_run(&other, &b, b_test);
        let md = render(&run, Some(&other));
        assert!(!md.contains("61.00%"), "{md}");
        assert!(
            md.contains(
                "Run `other` is not set beside this one: it trained on pets (digest `different`)"
            ),
            "{md}"
        );
    }
}

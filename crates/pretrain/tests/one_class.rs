//! The class rule (dataset::classes) at this stage's door: a dataset of one class stops the
//! stage before any work (no weights are read: the path given does not exist), with the rule's
//! message naming the split folder.

use std::process::Command;

#[test]
fn one_class_is_not_a_training_set() {
    let dir = tempfile::tempdir().unwrap();
    for (split, n) in [("train", 4), ("validation", 2), ("test", 2)] {
        let class = dir.path().join(split).join("banana");
        std::fs::create_dir_all(&class).unwrap();
        for i in 0..n {
            // Never decoded: the scan alone decides.
            std::fs::write(class.join(format!("{i}.png")), b"not decoded").unwrap();
        }
    }
    let out = dir.path().join("out");
    let run = Command::new(env!("CARGO_BIN_EXE_pretrain"))
        .args(["--data".as_ref(), dir.path().as_os_str()])
        .args(["--out".as_ref(), out.as_os_str()])
        .args(["--follow-links"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    let expected = format!(
        "training needs at least 2 classes, found 1 ({})",
        dir.path().join("train").display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!out.join("stage.json").exists());
}

//! Writes the CRD YAML of every custom resource, one file per kind, into
//! the given directories (default: `manifests/crds` and the Helm chart's
//! `charts/qdrant-operator/crds`, which install the same CRDs).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut dirs: Vec<String> = std::env::args().skip(1).collect();
    if dirs.is_empty() {
        dirs = vec![
            "manifests/crds".into(),
            "charts/qdrant-operator/crds".into(),
        ];
    }
    for dir in &dirs {
        std::fs::create_dir_all(dir)?;
        for (file, yaml) in qdrant_operator::crd::rendered()? {
            std::fs::write(std::path::Path::new(dir).join(&file), yaml)?;
            println!("wrote {dir}/{file}");
        }
    }
    Ok(())
}

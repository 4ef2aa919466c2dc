//! Writes the CRD YAML of every custom resource into a directory
//! (default `manifests/crds`), one file per kind.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "manifests/crds".into());
    std::fs::create_dir_all(&dir)?;
    for (file, yaml) in qdrant_operator::crd::rendered()? {
        std::fs::write(std::path::Path::new(&dir).join(&file), yaml)?;
        println!("wrote {dir}/{file}");
    }
    Ok(())
}

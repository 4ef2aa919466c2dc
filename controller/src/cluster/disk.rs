//! Whether the pods that stay after a scale-in have room for the shards of
//! those that leave, from each agent's view of its disk (`GetDisk`).

use crate::agents::Agents;
use qdrant_agent_proto::v1 as pb;

/// One pod's disk under Qdrant's storage, as its agent tells it.
#[derive(Debug, Clone, PartialEq)]
pub struct Disk {
    pub pod: String,
    pub free: u64,
    pub total: u64,
    /// What the collections take on it.
    pub collections: u64,
}

/// The disks of `pods`; `None` when an agent cannot tell (it does not see
/// the storage volume, is out of reach, or predates the question): the
/// check is then skipped, as before there was one.
pub(super) async fn disks(agents: &Agents, pods: &[String]) -> Option<Vec<Disk>> {
    let mut out = vec![];
    for pod in pods {
        let mut client = agents.connect(pod).await.ok()?;
        let d = match client.get_disk(pb::GetDiskRequest {}).await {
            Ok(d) => d.into_inner(),
            Err(e) => {
                tracing::info!(%pod, error = %e.message(), "no disk figures from the agent; the scale-in does not check the disk");
                return None;
            }
        };
        if !d.seen {
            return None;
        }
        out.push(Disk {
            pod: pod.clone(),
            free: d.free_bytes,
            total: d.total_bytes,
            collections: d.collections_bytes,
        });
    }
    Some(out)
}

/// Pure: why the pods that stay cannot take the shards of the pods that
/// leave, or `None`. Shards spread evenly over the staying pods, so each
/// must have room for its share of what the leaving pods' collections take,
/// beyond a reserve of 5% of its volume (Qdrant needs room to optimize
/// segments, and a full disk stops its writes).
pub fn disk_refusal(staying: &Option<Vec<Disk>>, leaving: &Option<Vec<Disk>>) -> Option<String> {
    let (Some(staying), Some(leaving)) = (staying, leaving) else {
        return None;
    };
    let need: u64 = leaving.iter().map(|d| d.collections).sum();
    let share = need.div_ceil(staying.len().max(1) as u64);
    let room = |d: &Disk| d.free.saturating_sub(d.total / 20);
    let tightest = staying.iter().min_by_key(|d| room(d))?;
    if share <= room(tightest) {
        return None;
    }
    let names = |ds: &[Disk]| {
        ds.iter()
            .map(|d| d.pod.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(format!(
        "not enough disk: the pods that leave ({}) hold {} of collection data, about {} for each pod that stays, and {} has {} free beyond a reserve of 5% of its volume ({} free of {}); grow the volumes first (spec.persistence.size), or keep more nodes",
        names(leaving),
        bytes(need),
        bytes(share),
        tightest.pod,
        bytes(room(tightest)),
        bytes(tightest.free),
        bytes(tightest.total),
    ))
}

/// Bytes for people: 1.5 GiB, 200 MiB, 12 KiB.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn disk(pod: &str, free: u64, total: u64, collections: u64) -> Disk {
        Disk {
            pod: pod.into(),
            free,
            total,
            collections,
        }
    }

    #[test]
    fn a_scale_in_is_refused_when_a_staying_pod_cannot_take_its_share() {
        let leaving = Some(vec![disk("q-2", 5 * GIB, 10 * GIB, 4 * GIB)]);
        // 2 GiB for each of two staying pods; 10 GiB volumes keep 0.5 GiB.
        let roomy = Some(vec![
            disk("q-0", 3 * GIB, 10 * GIB, GIB),
            disk("q-1", 6 * GIB, 10 * GIB, GIB),
        ]);
        assert_eq!(disk_refusal(&roomy, &leaving), None);
        let tight = Some(vec![
            disk("q-0", 9 * GIB, 10 * GIB, GIB),
            disk("q-1", 2 * GIB, 10 * GIB, GIB),
        ]);
        let why = disk_refusal(&tight, &leaving).expect("refused");
        assert!(
            why.contains("(q-2) hold 4.0 GiB")
                && why.contains("2.0 GiB for each pod")
                && why.contains("q-1 has 1.5 GiB free")
                && why.contains("spec.persistence.size"),
            "{why}"
        );
        // An agent that cannot tell: no check, as before there was one.
        assert_eq!(disk_refusal(&None, &leaving), None);
        assert_eq!(disk_refusal(&tight, &None), None);
    }

    #[test]
    fn byte_counts_read_as_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(200 << 20), "200.0 MiB");
    }
}

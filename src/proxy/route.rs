//! Where a public model is served: the configured upstreams, each model's
//! ordered deployments, affinity for follow-ups, and the `"auto"` fallback
//! chain built from the model catalogue.
//!
//! A model without a route goes to the first upstream under its own name.
//! Nothing here performs I/O; sending is `proxy::upstream`'s job.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
use crate::proxy::upstream::Upstream;

/// One place to send a request: an upstream and the model name it knows.
#[derive(Clone)]
pub struct Deployment {
    pub upstream: Arc<Upstream>,
    pub model: String,
}

pub struct Routes {
    upstreams: Vec<Arc<Upstream>>,
    by_model: HashMap<String, Vec<(usize, String)>>,
}

impl Routes {
    /// Builds every upstream client once. `config` has been validated, so
    /// every route names an existing upstream.
    pub fn new(config: &Config) -> Result<Self, rustls::Error> {
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| Upstream::new(u).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let index: HashMap<&str, usize> = config
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.as_str(), i))
            .collect();
        let by_model = config
            .routes
            .iter()
            .map(|route| {
                let deployments = route
                    .deployments
                    .iter()
                    .filter_map(|d| {
                        let upstream = *index.get(d.upstream.as_str())?;
                        let model = d.deployment.clone().unwrap_or_else(|| route.model.clone());
                        Some((upstream, model))
                    })
                    .collect();
                (route.model.clone(), deployments)
            })
            .collect();
        Ok(Self {
            upstreams,
            by_model,
        })
    }

    /// The deployments of `model`, in the order they are tried.
    pub fn deployments(&self, model: &str) -> Vec<Deployment> {
        match self.by_model.get(model) {
            Some(list) => list
                .iter()
                .filter_map(|(i, name)| {
                    Some(Deployment {
                        upstream: self.upstreams.get(*i)?.clone(),
                        model: name.clone(),
                    })
                })
                .collect(),
            None => self
                .upstreams
                .first()
                .map(|upstream| Deployment {
                    upstream: upstream.clone(),
                    model: model.to_owned(),
                })
                .into_iter()
                .collect(),
        }
    }

    /// Deployments of `model` on the upstream named `upstream` only: a
    /// follow-up must reach the backend that holds the previous response.
    pub fn pinned(&self, model: &str, upstream: &str) -> Vec<Deployment> {
        let on_upstream: Vec<Deployment> = self
            .deployments(model)
            .into_iter()
            .filter(|d| d.upstream.name == upstream)
            .collect();
        if !on_upstream.is_empty() {
            return on_upstream;
        }
        self.upstream(upstream)
            .map(|upstream| Deployment {
                upstream,
                model: model.to_owned(),
            })
            .into_iter()
            .collect()
    }

    pub fn upstream(&self, name: &str) -> Option<Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.name == name).cloned()
    }

    pub fn default_upstream(&self) -> Option<Arc<Upstream>> {
        self.upstreams.first().cloned()
    }
}

/// A model id split into family and generation: `gpt-5.4-mini` →
/// (`gpt-mini`, [5, 4]); `o3` → (`o`, [3]); `o4-mini` → (`o-mini`, [4]).
fn family_and_generation(model: &str) -> (String, Vec<u32>) {
    let mut family = Vec::new();
    let mut generation = Vec::new();
    for (i, part) in model.split('-').enumerate() {
        let digits_at = part.find(|c: char| c.is_ascii_digit());
        match digits_at {
            Some(at)
                if part[at..].chars().all(|c| c.is_ascii_digit() || c == '.')
                    && generation.is_empty() =>
            {
                if at > 0 {
                    family.push(&part[..at]);
                }
                generation = part[at..]
                    .split('.')
                    .filter_map(|n| n.parse().ok())
                    .collect();
            }
            _ if i == 0 || !part.is_empty() => family.push(part),
            _ => {}
        }
    }
    (family.join("-"), generation)
}

/// The `"auto"` chain for `model` (platform.md): other generations of the
/// same family first, newest first; then the newest model of every other
/// family, newest first. At most `limit` models; `model` itself never.
pub fn auto_chain<'a>(
    model: &str,
    catalogue: impl IntoIterator<Item = &'a str>,
    limit: usize,
) -> Vec<String> {
    let (family, _) = family_and_generation(model);
    let mut same = Vec::new();
    let mut newest_of_other: HashMap<String, (Vec<u32>, String)> = HashMap::new();
    for candidate in catalogue {
        if candidate == model {
            continue;
        }
        let (candidate_family, generation) = family_and_generation(candidate);
        if generation.is_empty() {
            continue;
        }
        if candidate_family == family {
            same.push((generation, candidate.to_owned()));
        } else {
            let entry = newest_of_other
                .entry(candidate_family)
                .or_insert_with(|| (generation.clone(), candidate.to_owned()));
            if (&generation, candidate) > (&entry.0, entry.1.as_str()) {
                *entry = (generation, candidate.to_owned());
            }
        }
    }
    same.sort_by(|a, b| b.cmp(a));
    let mut others: Vec<(Vec<u32>, String)> = newest_of_other.into_values().collect();
    others.sort_by(|a, b| b.cmp(a));
    same.into_iter()
        .chain(others)
        .map(|(_, name)| name)
        .take(limit)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_generations() {
        assert_eq!(
            family_and_generation("gpt-5.4-mini"),
            ("gpt-mini".into(), vec![5, 4])
        );
        assert_eq!(family_and_generation("gpt-5"), ("gpt".into(), vec![5]));
        assert_eq!(family_and_generation("o3"), ("o".into(), vec![3]));
        assert_eq!(family_and_generation("o4-mini"), ("o-mini".into(), vec![4]));
        assert_eq!(family_and_generation("gpt-4.1"), ("gpt".into(), vec![4, 1]));
    }

    #[test]
    fn auto_tries_the_same_family_first_then_the_newest_of_others() {
        let catalogue = [
            "gpt-5",
            "gpt-5.2",
            "gpt-5.4",
            "gpt-5.5",
            "gpt-5.4-mini",
            "gpt-5-mini",
            "o3",
            "o4-mini",
            "gpt-4.1",
        ];
        assert_eq!(
            auto_chain("gpt-5.5", catalogue, 10),
            [
                "gpt-5.4",
                "gpt-5.2",
                "gpt-5",
                "gpt-4.1",
                "gpt-5.4-mini",
                "o4-mini",
                "o3"
            ]
        );
        assert_eq!(
            auto_chain("gpt-5.4-mini", catalogue, 3),
            ["gpt-5-mini", "gpt-5.5", "o4-mini"]
        );
    }
}

//! Load-time lowering of layout ops to rasters, and merging of rasters in a row.
//!
//! A layout node whose data inputs have static shapes (and whose parameters are constants)
//! becomes a `Raster` node — one per output, so a Split becomes one per part. Views (Reshape,
//! Flatten, Squeeze, Unsqueeze that keep the values as they lie) stay as they are, since they
//! copy nothing. Then a raster (or view) reading the output of another raster (or view) that
//! nothing else reads absorbs it: one raster reading the first one's inputs directly, so e.g.
//! ShuffleNet's Reshape → Transpose → Reshape is one copy. Two views in a row stay views.

use std::collections::{HashMap, HashSet};

use crate::LoadError;
use crate::graph::{Graph, Node};
use crate::ops::Op;
use crate::ops::layout::Params;
use crate::ops::raster::{Raster, compose};

impl Graph {
    /// Lowers layout ops with static shapes to `Raster` nodes and merges rasters in a row (see
    /// the module docs). Needs [`Graph::value_info`] up to date; leaves it so.
    pub fn lower_to_rasters(&mut self) -> Result<(), LoadError> {
        let mut plans: HashMap<usize, Raster> = HashMap::new();
        let mut nodes = Vec::with_capacity(self.nodes.len());
        for node in std::mem::take(&mut self.nodes) {
            let Some(rasters) = self.plan(&node)? else {
                nodes.push(node);
                continue;
            };
            let view = node.op.is_view();
            let data = node.op.data_inputs(node.inputs.len());
            let parts = rasters.len();
            for (k, (raster, output)) in rasters.into_iter().zip(&node.outputs).enumerate() {
                plans.insert(nodes.len(), raster.clone());
                if view {
                    nodes.push(node.clone());
                    continue;
                }
                let name = if parts > 1 {
                    format!("{}#{k}", node.name)
                } else {
                    node.name.clone()
                };
                nodes.push(Node {
                    name,
                    op: Op::Raster(raster),
                    inputs: node.inputs[..data].to_vec(),
                    outputs: vec![output.clone()],
                });
            }
        }
        self.nodes = nodes;
        self.merge_rasters(plans);
        self.remove_dead_nodes();
        self.value_info = self.infer_shapes()?;
        Ok(())
    }

    /// The rasters of a layout node, when its shapes and parameters are known.
    fn plan(&self, node: &Node) -> Result<Option<Vec<Raster>>, LoadError> {
        if !node.op.is_layout() || matches!(node.op, Op::Raster(_)) {
            return Ok(None);
        }
        let data = node.op.data_inputs(node.inputs.len());
        let shapes: Option<Vec<&[usize]>> = node.inputs[..data]
            .iter()
            .map(|i| self.value_info.get(i)?.shape.as_deref())
            .collect();
        let params: Vec<_> = node.inputs.iter().map(|i| self.constants.get(i)).collect();
        let params_known = node.inputs[data..]
            .iter()
            .zip(&params[data..])
            .all(|(name, value)| name.is_empty() || value.is_some());
        let Some(shapes) = shapes.filter(|s| params_known && !s.is_empty()) else {
            return Ok(None);
        };
        let rasters =
            node.op
                .plan(&shapes, &Params(&params))
                .map_err(|reason| LoadError::Shape {
                    node: node.name.clone(),
                    op: node.op.name().to_owned(),
                    reason,
                })?;
        Ok((rasters.len() == node.outputs.len()).then_some(rasters))
    }

    /// Each planned node absorbs the planned producers of its inputs that nothing else reads.
    fn merge_rasters(&mut self, mut plans: HashMap<usize, Raster>) {
        let producer: HashMap<String, usize> = plans
            .keys()
            .map(|&i| (self.nodes[i].outputs[0].clone(), i))
            .collect();
        let mut readers = distinct_readers(self);
        for i in 0..self.nodes.len() {
            let Some(mut plan) = plans.remove(&i) else {
                continue;
            };
            let mut refused = HashSet::new();
            while let Some((j, p)) =
                self.nodes[i]
                    .inputs
                    .iter()
                    .enumerate()
                    .find_map(|(j, name)| {
                        let p = *producer.get(name)?;
                        let sole = readers.get(name) == Some(&1) && !self.outputs.contains(name);
                        let both_views = self.nodes[i].op.is_view() && self.nodes[p].op.is_view();
                        (sole && !both_views && plans.contains_key(&p) && !refused.contains(&p))
                            .then_some((j, p))
                    })
            {
                match self.absorb(i, &plan, j, p, &plans[&p]) {
                    Some((merged, inputs)) => {
                        for name in data_inputs(&self.nodes[p]) {
                            if self.nodes[i].inputs.contains(name) {
                                readers.entry(name.clone()).and_modify(|n| *n -= 1);
                            }
                        }
                        plan = merged;
                        plans.remove(&p);
                        self.nodes[i].inputs = inputs;
                        self.nodes[i].op = Op::Raster(plan.clone());
                    }
                    None => {
                        refused.insert(p);
                    }
                }
            }
            plans.insert(i, plan);
        }
    }

    /// Node `i`'s raster with its input `j` computed by node `p`'s raster instead, and its new
    /// inputs; `None` when merging would not pay.
    fn absorb(
        &self,
        i: usize,
        consumer: &Raster,
        j: usize,
        p: usize,
        producer: &Raster,
    ) -> Option<(Raster, Vec<String>)> {
        let own = data_inputs(&self.nodes[i]);
        let mut inputs: Vec<String> = Vec::with_capacity(own.len());
        let mut slot = |name: &String| match inputs.iter().position(|n| n == name) {
            Some(k) => k,
            None => {
                inputs.push(name.clone());
                inputs.len() - 1
            }
        };
        let consumer_inputs: Vec<usize> = own
            .iter()
            .enumerate()
            .map(|(k, name)| if k == j { usize::MAX } else { slot(name) })
            .collect();
        let producer_inputs: Vec<usize> =
            data_inputs(&self.nodes[p]).iter().map(&mut slot).collect();
        let merged = compose(consumer, j, producer, &consumer_inputs, &producer_inputs)?;
        let before = consumer.regions.len() + producer.regions.len();
        (merged.regions.len() <= 2 * before + 16).then_some((merged, inputs))
    }
}

/// The inputs of a node that carry data (not parameters).
fn data_inputs(node: &Node) -> &[String] {
    &node.inputs[..node.op.data_inputs(node.inputs.len())]
}

/// How many nodes read each value.
fn distinct_readers(graph: &Graph) -> HashMap<String, usize> {
    let mut count: HashMap<String, usize> = HashMap::new();
    for node in &graph.nodes {
        let names: HashSet<&String> = node.inputs.iter().collect();
        for name in names {
            *count.entry(name.clone()).or_default() += 1;
        }
    }
    count
}

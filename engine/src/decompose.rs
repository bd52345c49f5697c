//! Load-time decomposition: every composite op (see [`crate::ops::composite`]) becomes the
//! atomic nodes it is made of, and a Shape or Size of a value whose shape is static becomes a
//! constant (so what it feeds, e.g. a Reshape, keeps a static shape and can be lowered).
//!
//! It runs before shape inference proper, so it infers as it goes: each expansion sees the
//! types and shapes of the values before it.

use std::collections::HashMap;

use crate::LoadError;
use crate::graph::{Graph, Node, ValueInfo};
use crate::ops::Op;
use crate::ops::composite::Builder;

impl Graph {
    /// Replaces composite nodes by atomic ones and static Shape/Size nodes by constants.
    pub fn decompose(&mut self) -> Result<(), LoadError> {
        let mut infos: HashMap<String, ValueInfo> = HashMap::new();
        for spec in &self.inputs {
            let shape = spec.fixed_shape();
            infos.insert(
                spec.name.clone(),
                ValueInfo {
                    dtype: spec.dtype,
                    shape,
                },
            );
        }
        for (name, value) in &self.constants {
            infos.insert(name.clone(), ValueInfo::of(value));
        }
        let mut nodes = Vec::with_capacity(self.nodes.len());
        for node in std::mem::take(&mut self.nodes) {
            let expanded = match &node.op {
                Op::Composite(c) => {
                    let mut b = Builder::new(&node.name, &mut self.constants, &infos);
                    let results = c
                        .expand(&mut b, &node.inputs)
                        .map_err(|reason| fail(&node, reason))?;
                    let pairs: Vec<(String, &str)> = results
                        .into_iter()
                        .zip(node.outputs.iter().map(String::as_str))
                        .collect();
                    b.finish(&pairs)
                }
                Op::Shape { .. } | Op::Size => match Graph::static_value(&node, &infos) {
                    Some(value) => {
                        infos.insert(node.outputs[0].clone(), ValueInfo::of(&value));
                        self.constants.insert(node.outputs[0].clone(), value);
                        continue;
                    }
                    None => vec![node],
                },
                _ => vec![node],
            };
            for node in expanded {
                // Constants an expansion made are known by value.
                for input in &node.inputs {
                    if let (None, Some(value)) = (infos.get(input), self.constants.get(input)) {
                        infos.insert(input.clone(), ValueInfo::of(value));
                    }
                }
                let known: Vec<Option<&ValueInfo>> =
                    node.inputs.iter().map(|i| infos.get(i)).collect();
                let constants: Vec<_> = node.inputs.iter().map(|i| self.constants.get(i)).collect();
                let outputs = node
                    .op
                    .infer(&known, &constants)
                    .map_err(|r| fail(&node, r))?;
                for (name, info) in node.outputs.iter().zip(outputs) {
                    infos.insert(name.clone(), info);
                }
                nodes.push(node);
            }
        }
        self.nodes = nodes;
        Ok(())
    }

    /// The value of a Shape or Size node whose input's shape is static.
    fn static_value(node: &Node, infos: &HashMap<String, ValueInfo>) -> Option<crate::Value> {
        let shape = infos.get(node.inputs.first()?)?.shape.as_deref()?;
        Some(match &node.op {
            Op::Shape { start, end } => crate::ops::generate::shape(shape, *start, *end),
            _ => crate::Value::I64 {
                shape: vec![],
                data: vec![shape.iter().product::<usize>() as i64],
            },
        })
    }
}

fn fail(node: &Node, reason: String) -> LoadError {
    LoadError::Shape {
        node: node.name.clone(),
        op: node.op.name().to_owned(),
        reason,
    }
}

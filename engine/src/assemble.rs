//! Concats assembled in place. A Raster node that only lays whole convolution outputs end to
//! end — a Concat on the channels of one image, as in SqueezeNet's fire modules and
//! Inception's branches — does no copying: its output buffer is allocated when the first of
//! those convolutions runs, and each convolution writes its output straight into its part.
//! The Raster node then only takes the finished buffer. This saves the copy (and the memory
//! traffic of a second buffer), which at two threads was 6 % of SqueezeNet's run.
//!
//! A convolution qualifies when it is planned (see [`crate::search`]), its output is read by
//! the Raster alone and is no graph output, and its static shape is exactly its part's length.

use std::collections::HashMap;
use std::mem::MaybeUninit;

use crate::graph::Graph;
use crate::ops::Op;
use crate::search::ConvPlan;

/// Where a convolution's output goes instead of a value of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Part {
    /// The Raster node whose output holds it.
    pub concat: usize,
    /// Its first element in that output.
    pub offset: usize,
    pub len: usize,
    /// The concat's elements.
    pub total: usize,
}

/// The in-place concats of a session.
#[derive(Debug, Clone, Default)]
pub(crate) struct Assembly {
    /// Per node: the part a convolution writes into.
    parts: Vec<Option<Part>>,
    /// Per node: for an assembled Raster, how many parts it has.
    concats: Vec<Option<usize>>,
}

/// The output buffers of assembled concats while their parts are being written.
#[derive(Default)]
pub(crate) struct Buffers {
    /// Raster node → its buffer (length 0, capacity the output's elements) and the parts
    /// written so far.
    open: HashMap<usize, (Vec<f32>, usize)>,
}

impl Assembly {
    /// Finds the concats of `graph` whose inputs can all be written in place.
    pub(crate) fn plan(graph: &Graph, plans: &[Option<ConvPlan>]) -> Assembly {
        let nodes = graph.nodes.len();
        let mut assembly = Assembly {
            parts: vec![None; nodes],
            concats: vec![None; nodes],
        };
        let producers: HashMap<&str, usize> = graph
            .nodes
            .iter()
            .enumerate()
            .flat_map(|(index, node)| node.outputs.iter().map(move |o| (o.as_str(), index)))
            .collect();
        let mut readers: HashMap<&str, usize> = HashMap::new();
        for input in graph.nodes.iter().flat_map(|node| &node.inputs) {
            *readers.entry(input.as_str()).or_default() += 1;
        }
        for (index, node) in graph.nodes.iter().enumerate() {
            let Op::Raster(raster) = &node.op else {
                continue;
            };
            if raster.fill.is_some() || raster.regions.len() != node.inputs.len() {
                continue;
            }
            let mut parts = Vec::with_capacity(raster.regions.len());
            for region in &raster.regions {
                let whole = region.src == 0
                    && region.size[0] == 1
                    && region.size[1] == 1
                    && region.src_strides[2] == 1
                    && region.dst_strides[2] == 1;
                let Some(name) = node.inputs.get(region.input).filter(|_| whole) else {
                    break;
                };
                let len = region.size[2];
                let static_len = graph
                    .value_info
                    .get(name)
                    .and_then(|info| info.shape.as_ref())
                    .map(|shape| shape.iter().product::<usize>());
                let producer = producers.get(name.as_str()).copied();
                let qualifies = static_len == Some(len)
                    && readers.get(name.as_str()) == Some(&1)
                    && !graph.outputs.contains(name)
                    && producer.is_some_and(|p| {
                        plans.get(p).is_some_and(Option::is_some)
                            && graph.nodes[p].outputs.len() == 1
                            && assembly.parts[p].is_none()
                    });
                match producer {
                    Some(producer) if qualifies => parts.push((producer, region.dst, len)),
                    _ => break,
                }
            }
            if parts.len() != raster.regions.len() || !tiles(&mut parts, raster.elements()) {
                continue;
            }
            for &(producer, offset, len) in &parts {
                assembly.parts[producer] = Some(Part {
                    concat: index,
                    offset,
                    len,
                    total: raster.elements(),
                });
            }
            assembly.concats[index] = Some(parts.len());
        }
        assembly
    }

    /// The part node `index` writes into, if it is an assembled concat's input.
    pub(crate) fn part(&self, index: usize) -> Option<Part> {
        self.parts.get(index).copied().flatten()
    }

    /// The number of parts of node `index`, if it is an assembled concat.
    pub(crate) fn concat(&self, index: usize) -> Option<usize> {
        self.concats.get(index).copied().flatten()
    }

    /// How many concats are assembled in place.
    pub(crate) fn count(&self) -> usize {
        self.concats.iter().flatten().count()
    }
}

/// Whether the parts `(producer, offset, len)` cover `0..total` without gaps or overlaps (a
/// raster's regions should be disjoint; the unsafe code in [`Buffers::finish`] relies on it,
/// so it is checked here rather than assumed). Sorts them by offset.
fn tiles(parts: &mut [(usize, usize, usize)], total: usize) -> bool {
    parts.sort_by_key(|&(_, offset, _)| offset);
    let mut end = 0;
    for &(_, offset, len) in parts.iter() {
        if offset != end {
            return false;
        }
        end += len;
    }
    end == total
}

impl Buffers {
    /// Lets `write` fill `part` of its concat's buffer (allocated on the first part), which
    /// must write every element of the slice it is given when it returns `Ok`.
    pub(crate) fn write<E>(
        &mut self,
        part: Part,
        write: impl FnOnce(&mut [MaybeUninit<f32>]) -> Result<(), E>,
    ) -> Result<(), E> {
        let (buffer, written) = self
            .open
            .entry(part.concat)
            .or_insert_with(|| (Vec::with_capacity(part.total), 0));
        write(&mut buffer.spare_capacity_mut()[part.offset..part.offset + part.len])?;
        *written += 1;
        Ok(())
    }

    /// The finished output of concat node `concat` once all its `parts` were written.
    pub(crate) fn finish(&mut self, concat: usize, parts: usize, total: usize) -> Option<Vec<f32>> {
        let (mut buffer, written) = self.open.remove(&concat)?;
        if written != parts || buffer.capacity() < total {
            return None;
        }
        // SAFETY: the parts are disjoint (a raster's regions are), together they are all
        // `total` elements (`Assembly::plan` took only rasters without fill whose regions
        // are the parts), and each `write` wrote all of its part.
        unsafe { buffer.set_len(total) };
        Some(buffer)
    }
}

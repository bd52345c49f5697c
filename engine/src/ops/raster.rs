//! The raster op: an output assembled by strided copies ("regions") from its inputs — MNN's
//! geometric computing. Every layout op (Transpose, Concat, Slice, Gather, Pad, …) is one
//! raster per output once its input shapes are known (see [`super::layout`]), so one kernel
//! runs them all, and two rasters in a row can be merged into one (see [`compose`]).
//!
//! Merging works on *index maps*: for each output element, the input and element it copies
//! (or [`FILL`]). Composing two maps is exact whatever the ops were; [`Raster::from_map`] then
//! finds the regions again, greedily: the longest affine run of elements, then rows repeating
//! that run at a fixed offset, then planes repeating the rows.

use crate::{Tensor, Value};

/// Elements a raster's output may hold: a hostile model's Expand or Pad could otherwise ask
/// for any amount of memory.
pub const MAX_ELEMENTS: usize = 1 << 28;

/// Regions a raster may hold.
pub const MAX_REGIONS: usize = 1 << 20;

/// An index-map entry for an output element no input element is copied to.
pub const FILL: u64 = u64::MAX;

/// Bits of an index-map entry holding the element (the rest hold the input).
const ELEMENT_BITS: u32 = 40;

/// How far past a run [`Raster::from_map`] looks for the next row of the same input.
const ROW_SEARCH: usize = 1 << 16;

/// One strided copy: for `i < size[0]`, `j < size[1]`, `k < size[2]`, output element
/// `dst + i·dst_strides[0] + j·dst_strides[1] + k·dst_strides[2]` takes element
/// `src + i·src_strides[0] + j·src_strides[1] + k·src_strides[2]` of input `input`.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    pub input: usize,
    pub src: usize,
    /// Negative for reversed reads (negative Slice steps, reflect padding), zero to repeat.
    pub src_strides: [isize; 3],
    pub dst: usize,
    pub dst_strides: [usize; 3],
    pub size: [usize; 3],
}

/// A layout op resolved for known shapes: the output shape and the regions that fill it.
#[derive(Debug, Clone, PartialEq)]
pub struct Raster {
    pub shape: Vec<usize>,
    /// Disjoint in the output.
    pub regions: Vec<Region>,
    /// The value of output elements no region writes (`None`: the regions write them all).
    pub fill: Option<f32>,
}

/// An N-D strided copy, before it is cut into 3-D [`Region`]s.
#[derive(Debug, Clone)]
pub struct Block {
    pub input: usize,
    pub size: Vec<usize>,
    pub src: usize,
    pub src_strides: Vec<isize>,
    pub dst: usize,
    pub dst_strides: Vec<usize>,
}

/// The number of elements of `shape`, refused over [`MAX_ELEMENTS`]. Zero dimensions count
/// as one in that check, so an empty shape cannot hide huge dimensions (whose strides or index
/// lists would overflow or exhaust memory).
pub fn elements(shape: &[usize]) -> Result<usize, String> {
    let spread = shape
        .iter()
        .fold(1usize, |acc, &d| acc.saturating_mul(d.max(1)));
    if spread > MAX_ELEMENTS {
        return Err(format!(
            "{shape:?} is too large: more than {MAX_ELEMENTS} elements"
        ));
    }
    Ok(shape.iter().product())
}

/// Row-major strides of `shape`.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut out = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        out[i] = out[i + 1] * shape[i + 1];
    }
    out
}

impl Block {
    /// Cuts the block into regions: unit axes dropped, axes that continue the next one merged,
    /// and any axes beyond three enumerated.
    fn regions(&self, out: &mut Vec<Region>) -> Result<(), String> {
        if self.size.contains(&0) {
            return Ok(());
        }
        let mut axes: Vec<(usize, isize, usize)> = Vec::with_capacity(self.size.len());
        for ((&n, &s), &d) in self
            .size
            .iter()
            .zip(&self.src_strides)
            .zip(&self.dst_strides)
        {
            match axes.last_mut() {
                _ if n == 1 => {}
                Some(last) if last.1 == s * n as isize && last.2 == d * n => {
                    *last = (last.0 * n, s, d);
                }
                _ => axes.push((n, s, d)),
            }
        }
        while axes.len() < 3 {
            axes.insert(0, (1, 0, 0));
        }
        let (outer, inner) = axes.split_at(axes.len() - 3);
        let count: usize = outer.iter().map(|a| a.0).product();
        if out.len() + count > MAX_REGIONS {
            return Err(format!("more than {MAX_REGIONS} regions"));
        }
        let mut index = vec![0usize; outer.len()];
        for _ in 0..count {
            let (mut src, mut dst) = (self.src as isize, self.dst);
            for (&i, &(_, s, d)) in index.iter().zip(outer) {
                src += i as isize * s;
                dst += i * d;
            }
            out.push(Region {
                input: self.input,
                src: usize::try_from(src).map_err(|_| "region starts before its input")?,
                src_strides: [inner[0].1, inner[1].1, inner[2].1],
                dst,
                dst_strides: [inner[0].2, inner[1].2, inner[2].2],
                size: [inner[0].0, inner[1].0, inner[2].0],
            });
            for axis in (0..outer.len()).rev() {
                index[axis] += 1;
                if index[axis] < outer[axis].0 {
                    break;
                }
                index[axis] = 0;
            }
        }
        Ok(())
    }
}

impl Region {
    fn count(&self) -> usize {
        self.size.iter().product()
    }

    /// The lowest and highest source element read, and one past the highest output element
    /// written (`None` for an empty region).
    fn extent(&self) -> Option<(isize, isize, usize)> {
        if self.count() == 0 {
            return None;
        }
        let (mut low, mut high, mut end) = (self.src as isize, self.src as isize, self.dst);
        for axis in 0..3 {
            let steps = self.size[axis] - 1;
            let reach = self.src_strides[axis].checked_mul(steps as isize)?;
            if reach < 0 {
                low = low.checked_add(reach)?;
            } else {
                high = high.checked_add(reach)?;
            }
            end = end.checked_add(self.dst_strides[axis].checked_mul(steps)?)?;
        }
        Some((low, high, end + 1))
    }

    /// Calls `f(src, dst)` for every element, in order.
    fn for_each(&self, mut f: impl FnMut(usize, usize)) {
        let [n0, n1, n2] = self.size;
        for i in 0..n0 {
            for j in 0..n1 {
                let s = self.src as isize
                    + i as isize * self.src_strides[0]
                    + j as isize * self.src_strides[1];
                let d = self.dst + i * self.dst_strides[0] + j * self.dst_strides[1];
                for k in 0..n2 {
                    f(
                        (s + k as isize * self.src_strides[2]) as usize,
                        d + k * self.dst_strides[2],
                    );
                }
            }
        }
    }

    /// Copies the region; inner runs that are contiguous on both sides are slice copies.
    fn copy<T: Copy>(&self, src: &[T], dst: &mut [T]) {
        let [n0, n1, n2] = self.size;
        let [_, _, s2] = self.src_strides;
        let [_, _, d2] = self.dst_strides;
        for i in 0..n0 {
            for j in 0..n1 {
                let s = (self.src as isize
                    + i as isize * self.src_strides[0]
                    + j as isize * self.src_strides[1]) as usize;
                let d = self.dst + i * self.dst_strides[0] + j * self.dst_strides[1];
                match (s2, d2) {
                    (1, 1) => dst[d..d + n2].copy_from_slice(&src[s..s + n2]),
                    (0, 1) => dst[d..d + n2].fill(src[s]),
                    _ => {
                        for k in 0..n2 {
                            dst[d + k * d2] = src[(s as isize + k as isize * s2) as usize];
                        }
                    }
                }
            }
        }
    }
}

impl Raster {
    /// A raster from N-D blocks; `fill` is used if the blocks leave elements unwritten.
    pub fn new(shape: Vec<usize>, blocks: &[Block], fill: f32) -> Result<Raster, String> {
        let len = elements(&shape)?;
        let mut regions = Vec::new();
        for block in blocks {
            block.regions(&mut regions)?;
        }
        let written: usize = regions.iter().map(Region::count).sum();
        Ok(Raster {
            shape,
            regions,
            fill: (written < len).then_some(fill),
        })
    }

    /// The raster that copies all `len` elements of input 0 as they lie, under `shape`.
    pub fn identity(shape: Vec<usize>) -> Result<Raster, String> {
        let len = elements(&shape)?;
        let block = Block {
            input: 0,
            size: vec![len],
            src: 0,
            src_strides: vec![1],
            dst: 0,
            dst_strides: vec![1],
        };
        Raster::new(shape, &[block], 0.0)
    }

    /// The number of output elements.
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Checks every region against the inputs' lengths, so a copy cannot index out of bounds.
    fn check(&self, input_lens: &[usize]) -> Result<(), String> {
        let len = elements(&self.shape)?;
        for (index, r) in self.regions.iter().enumerate() {
            let Some((low, high, end)) = r.extent() else {
                if r.count() == 0 {
                    continue;
                }
                return Err(format!("region {index} overflows"));
            };
            let input_len = *input_lens
                .get(r.input)
                .ok_or_else(|| format!("region {index} reads missing input {}", r.input))?;
            if low < 0 || high as usize >= input_len || end > len {
                return Err(format!(
                    "region {index} does not fit input {} ({input_len} elements) or the \
                     output {:?}",
                    r.input, self.shape
                ));
            }
        }
        Ok(())
    }

    /// Runs the raster on input slices; unwritten elements are `fill`.
    pub fn run<T: Copy>(&self, inputs: &[&[T]], fill: T) -> Result<Vec<T>, String> {
        let lens: Vec<usize> = inputs.iter().map(|i| i.len()).collect();
        self.check(&lens)?;
        let mut out = vec![fill; self.elements()];
        for r in &self.regions {
            r.copy(inputs[r.input], &mut out);
        }
        Ok(out)
    }

    /// Runs the raster on values (all float or all int64).
    pub fn apply(&self, inputs: &[&Value]) -> Result<Value, String> {
        let fill = self.fill.unwrap_or(0.0);
        if let Some(Value::I64 { .. }) = inputs.first() {
            let data: Vec<&[i64]> = inputs
                .iter()
                .map(|v| match v {
                    Value::I64 { data, .. } => Ok(data.as_slice()),
                    Value::F32(_) => Err("inputs mix float and int64"),
                })
                .collect::<Result<_, _>>()?;
            let out = self.run(&data, fill as i64)?;
            return Ok(Value::I64 {
                shape: self.shape.clone(),
                data: out,
            });
        }
        let data: Vec<&[f32]> = inputs
            .iter()
            .map(|v| match v {
                Value::F32(t) => Ok(t.data()),
                Value::I64 { .. } => Err("inputs mix float and int64"),
            })
            .collect::<Result<_, _>>()?;
        let out = self.run(&data, fill)?;
        Tensor::new(self.shape.clone(), out)
            .map(Value::F32)
            .map_err(|e| e.to_string())
    }

    /// The index map: for each output element, its input and element packed (or [`FILL`]);
    /// `None` when an element index does not fit the packing.
    pub fn index_map(&self) -> Option<Vec<u64>> {
        let mut map = vec![FILL; self.elements()];
        let mut fits = true;
        for r in &self.regions {
            let input = (r.input as u64) << ELEMENT_BITS;
            r.for_each(|s, d| {
                fits &= (s as u64) < 1 << ELEMENT_BITS;
                map[d] = input | s as u64;
            });
        }
        fits.then_some(map)
    }

    /// The raster of an index map: regions found greedily (see the module docs).
    pub fn from_map(shape: Vec<usize>, map: &[u64], fill: f32) -> Raster {
        let mut covered = vec![false; map.len()];
        let mut regions = Vec::new();
        for p in 0..map.len() {
            if covered[p] || map[p] == FILL {
                continue;
            }
            let region = grow(map, &covered, p);
            region.for_each(|_, d| covered[d] = true);
            regions.push(region);
        }
        Raster {
            shape,
            regions,
            fill: map.contains(&FILL).then_some(fill),
        }
    }
}

fn unpack(entry: u64) -> (usize, i64) {
    (
        (entry >> ELEMENT_BITS) as usize,
        (entry & ((1 << ELEMENT_BITS) - 1)) as i64,
    )
}

/// The largest region starting at output element `p` that the map allows.
fn grow(map: &[u64], covered: &[bool], p: usize) -> Region {
    let (input, s0) = unpack(map[p]);
    // The element of `input` at output position `q`, if `q` is free to take.
    let at = |q: usize| -> Option<i64> {
        let entry = *map.get(q)?;
        let (i, e) = unpack(entry);
        (entry != FILL && !covered[q] && i == input).then_some(e)
    };
    let run_matches = |q: usize, base: i64, stride: i64, n: usize| {
        (0..n).all(|k| at(q + k) == Some(base + k as i64 * stride))
    };
    let next = |from: usize| (from..from.saturating_add(ROW_SEARCH)).find(|&q| at(q).is_some());

    let (mut n2, mut s2) = (1, 0);
    if let Some(e) = at(p + 1) {
        s2 = e - s0;
        n2 = 2;
        while at(p + n2) == Some(s0 + n2 as i64 * s2) {
            n2 += 1;
        }
    }
    let (mut n1, mut s1, mut d1) = (1, 0, 0);
    if let Some(q) = next(p + n2) {
        (d1, s1) = (q - p, at(q).unwrap_or(0) - s0);
        while run_matches(p + n1 * d1, s0 + n1 as i64 * s1, s2, n2) {
            n1 += 1;
        }
    }
    let plane_matches = |q: usize, base: i64| {
        (0..n1).all(|r| run_matches(q + r * d1, base + r as i64 * s1, s2, n2))
    };
    let (mut n0, mut s0_stride, mut d0) = (1, 0, 0);
    if let Some(q) = next(p + (n1 - 1) * d1 + n2) {
        (d0, s0_stride) = (q - p, at(q).unwrap_or(0) - s0);
        while plane_matches(p + n0 * d0, s0 + n0 as i64 * s0_stride) {
            n0 += 1;
        }
    }
    Region {
        input,
        src: s0 as usize,
        src_strides: [s0_stride as isize, s1 as isize, s2 as isize],
        dst: p,
        dst_strides: [d0, d1, 1],
        size: [n0, n1, n2],
    }
}

/// Rasters `consumer` and `producer` as one, where `producer` computes the consumer's input
/// `input`: the result reads the consumer's other inputs at `consumer_inputs[k]` and the
/// producer's at `producer_inputs[k]`. `None` when the maps are too large or the two fill
/// different values into elements they both leave unwritten.
pub fn compose(
    consumer: &Raster,
    input: usize,
    producer: &Raster,
    consumer_inputs: &[usize],
    producer_inputs: &[usize],
) -> Option<Raster> {
    const MAP_LIMIT: usize = 1 << 24;
    if consumer.elements() > MAP_LIMIT || producer.elements() > MAP_LIMIT {
        return None;
    }
    let (outer, inner) = (consumer.index_map()?, producer.index_map()?);
    let (mut own_fill, mut inner_fill) = (false, false);
    let remap = |entry: u64, inputs: &[usize]| {
        let (i, e) = unpack(entry);
        Some(((*inputs.get(i)? as u64) << ELEMENT_BITS) | e as u64)
    };
    let mut map = Vec::with_capacity(outer.len());
    for &entry in &outer {
        let (i, e) = unpack(entry);
        map.push(if entry == FILL {
            own_fill = true;
            FILL
        } else if i == input {
            match *inner.get(e as usize)? {
                FILL => {
                    inner_fill = true;
                    FILL
                }
                source => remap(source, producer_inputs)?,
            }
        } else {
            remap(entry, consumer_inputs)?
        });
    }
    let fill = match (own_fill, inner_fill) {
        (true, true) if consumer.fill != producer.fill => return None,
        (_, true) => producer.fill,
        _ => consumer.fill,
    };
    Some(Raster::from_map(
        consumer.shape.clone(),
        &map,
        fill.unwrap_or(0.0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The map of a transpose of `shape` by `perm`, element by element.
    fn transpose_map(shape: &[usize], perm: &[usize]) -> (Vec<usize>, Vec<u64>) {
        let out: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
        let (is, os) = (strides(shape), strides(&out));
        let map = (0..elements(&out).unwrap())
            .map(|flat| {
                let src: usize = (0..out.len())
                    .map(|axis| (flat / os[axis] % out[axis]) * is[perm[axis]])
                    .sum();
                src as u64
            })
            .collect();
        (out, map)
    }

    /// Whether the raster copies one input of `input_len` elements as it lies.
    fn is_identity(raster: &Raster, input_len: usize) -> bool {
        let len = raster.elements();
        match raster.regions.as_slice() {
            [r] => {
                r.input == 0
                    && r.src == 0
                    && r.dst == 0
                    && r.size == [1, 1, len]
                    && r.src_strides[2] == 1
                    && r.dst_strides[2] == 1
                    && input_len == len
            }
            [] => len == 0 && input_len == 0,
            _ => false,
        }
    }

    #[test]
    fn regular_maps_become_few_regions() {
        let (shape, map) = transpose_map(&[64, 56, 56], &[1, 2, 0]);
        let raster = Raster::from_map(shape, &map, 0.0);
        assert_eq!(raster.regions.len(), 1, "{:?}", raster.regions);
        assert_eq!(raster.index_map().unwrap(), map);
        let (shape, map) = transpose_map(&[2, 3, 4, 5], &[0, 3, 1, 2]);
        let raster = Raster::from_map(shape, &map, 0.0);
        assert!(raster.regions.len() <= 2, "{:?}", raster.regions);
        assert_eq!(raster.index_map().unwrap(), map);
        let identity: Vec<u64> = (0..1000).collect();
        let raster = Raster::from_map(vec![10, 100], &identity, 0.0);
        assert!(is_identity(&raster, 1000));
        assert!(!is_identity(&raster, 1001));
    }

    #[test]
    fn irregular_maps_are_still_exact() {
        let mut state = 7u64;
        let map: Vec<u64> = (0..500)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                match state >> 60 {
                    0 => FILL,
                    k => ((k % 3) << ELEMENT_BITS) | ((state >> 33) % 50),
                }
            })
            .collect();
        let raster = Raster::from_map(vec![500], &map, 1.5);
        assert_eq!(raster.index_map().unwrap(), map);
        let inputs: Vec<Vec<f32>> = (0..3)
            .map(|i| (0..50).map(|e| (i * 100 + e) as f32).collect())
            .collect();
        let slices: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
        let out = raster.run(&slices, 1.5).unwrap();
        for (o, &entry) in out.iter().zip(&map) {
            let want = if entry == FILL {
                1.5
            } else {
                let (i, e) = unpack(entry);
                inputs[i][e as usize]
            };
            assert_eq!(*o, want);
        }
    }

    #[test]
    fn regions_that_do_not_fit_their_input_are_refused() {
        let raster = Raster::identity(vec![4]).unwrap();
        assert!(raster.run(&[&[0.0f32; 3][..]], 0.0).is_err());
        assert!(raster.run::<f32>(&[], 0.0).is_err());
        assert_eq!(
            raster.run(&[&[1.0f32, 2.0, 3.0, 4.0][..]], 0.0).unwrap(),
            [1.0, 2.0, 3.0, 4.0]
        );
        assert!(elements(&[1 << 20, 1 << 20]).is_err());
        assert!(elements(&[0, usize::MAX]).is_err());
    }

    #[test]
    fn composing_a_transpose_with_its_inverse_is_the_identity() {
        let (shape, map) = transpose_map(&[3, 4, 5], &[2, 0, 1]);
        let forward = Raster::from_map(shape.clone(), &map, 0.0);
        let (back_shape, back_map) = transpose_map(&shape, &[1, 2, 0]);
        let back = Raster::from_map(back_shape, &back_map, 0.0);
        let both = compose(&back, 0, &forward, &[], &[0]).unwrap();
        assert!(is_identity(&both, 60), "{:?}", both.regions);
    }
}

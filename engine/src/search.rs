//! Semi-auto search (MNN's second idea): for each convolution, the candidate algorithms and
//! thread counts are run on this machine when a session is created and the fastest is kept.
//!
//! Candidates: im2col + GEMM (1×1 convolutions skip im2col) always; the same on filters packed
//! at load by the engine's own AVX-512 or AVX2 kernel ([`packed`]), and the input read under
//! the window ([`packed::implicit`]), where the CPU has one of those and each group has more
//! than one input channel; Winograd F(2×2, 3×3) and
//! F(4×4, 3×3) for 3×3 stride-1 undilated ungrouped convolutions; direct depthwise when each
//! channel has its own filter. Each runs on one thread and on all of the session's threads.
//! Choices are cached on disk ([`Options::cache_dir`]) under a key made of the model's digest,
//! this device (CPU brand, SIMD features, cores), the engine version and the session's thread
//! count, so a second session of the same model on the same device measures nothing. [`Search::CostModel`] skips measuring
//! and picks by rules of thumb.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::path::PathBuf;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::graph::{Graph, Node};
use crate::ops::conv::Window;
use crate::ops::packed::{self, PackedFilters};
use crate::ops::winograd::{Tile, Winograd};
use crate::ops::{Epilogue, Op, conv, depthwise};
use crate::{Tensor, Value};

/// How a session chooses each convolution's algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Search {
    /// Time every candidate on this machine (the default).
    Measure,
    /// Pick by rules of thumb, measuring nothing.
    CostModel,
}

/// How a session is created.
#[derive(Debug, Clone)]
pub struct Options {
    /// Threads per kernel (default: the machine's cores).
    pub threads: usize,
    pub search: Search,
    /// Where measured choices are kept between sessions (`None`: not kept).
    pub cache_dir: Option<PathBuf>,
    /// Run on the thread that loads and runs the session, never on a pool thread (one thread:
    /// `threads` is ignored). For an embedder that accounts, bounds or interrupts what runs on
    /// its own thread, as the task VM does.
    pub on_calling_thread: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            search: Search::Measure,
            cache_dir: None,
            on_calling_thread: false,
        }
    }
}

/// A convolution algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// im2col + GEMM (a 1×1, stride-1, unpadded convolution is one GEMM on the input).
    Gemm,
    /// im2col + GEMM on filters packed at load, per group ([`packed`]; AVX-512).
    Packed,
    /// The same GEMM reading the input under the window instead of unfolding it
    /// ([`packed::implicit`]).
    Implicit,
    Winograd(Tile),
    Depthwise,
}

/// How many threads a convolution runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Threads {
    One,
    /// All of the session's threads.
    All,
}

/// The algorithm and thread count chosen for one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Choice {
    pub algorithm: Algorithm,
    pub threads: Threads,
}

/// What the search did when the session was created.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchReport {
    pub search: Search,
    /// Wall time spent choosing (measuring, or reading the cache).
    pub seconds: f64,
    /// Candidate runs timed, warm-up runs included (0 when every choice came from the cache or
    /// the cost model).
    pub measured: usize,
    /// Convolutions whose choice came from the cache.
    pub cached: usize,
    /// The cache file read and written, if any.
    pub cache_file: Option<PathBuf>,
    /// Why the cache file could not be written, if it could not.
    pub cache_error: Option<String>,
    /// Node name → choice, in graph order.
    pub choices: Vec<(String, Choice)>,
}

/// A convolution ready to run with its chosen algorithm.
#[derive(Debug, Clone)]
pub(crate) struct ConvPlan {
    choice: Choice,
    winograd: Option<Winograd>,
    /// Packed filters, one per group.
    packed: Option<Vec<PackedFilters>>,
}

/// A convolution's operands and attributes, as a [`ConvPlan`] runs them.
pub(crate) struct ConvArgs<'a> {
    pub x: &'a Tensor,
    pub weights: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub window: Window,
    pub group: usize,
    pub relu: bool,
}

/// What the search needs to know about one convolution node.
struct ConvSite<'g> {
    node: &'g Node,
    input: [usize; 4],
    weights: &'g Tensor,
    bias: Option<&'g Tensor>,
    window: Window,
    group: usize,
    relu: bool,
}

impl ConvSite<'_> {
    /// A key that changes whenever the choice could: node, input shape, weights, window.
    fn key(&self) -> String {
        format!(
            "{}|{:?}|{:?}|{:?}|{}",
            self.node.name,
            self.input,
            self.weights.shape(),
            self.window,
            self.group
        )
    }

    fn candidates(&self, threads: usize) -> Vec<Choice> {
        let [_, c, _, _] = self.input;
        let m = self.weights.shape()[0];
        let mut algorithms = vec![Algorithm::Gemm];
        // Grouped too, but not with one channel per group (depthwise, or nearly).
        if packed::available() && (self.group == 1 || c > self.group) {
            algorithms.push(Algorithm::Packed);
            if packed::implicit_fits(&self.window) {
                algorithms.push(Algorithm::Implicit);
            }
        }
        if winograd_fits(&self.window, self.group) {
            algorithms.extend([Algorithm::Winograd(Tile::F2), Algorithm::Winograd(Tile::F4)]);
        }
        if self.group == c && m == c && self.group > 1 {
            algorithms.push(Algorithm::Depthwise);
        }
        let thread_options: &[Threads] = if threads > 1 {
            &[Threads::One, Threads::All]
        } else {
            &[Threads::All]
        };
        algorithms
            .into_iter()
            .flat_map(|algorithm| {
                thread_options
                    .iter()
                    .map(move |&threads| Choice { algorithm, threads })
            })
            .collect()
    }

    /// Rules of thumb: depthwise direct, Winograd F(4×4) on larger 3×3 outputs, GEMM else.
    fn cost_model(&self, threads: usize) -> Choice {
        let [n, c, h, w] = self.input;
        let [m, cg, kh, kw] = shape4(self.weights);
        let algorithm = if self.group == c && m == c && self.group > 1 {
            Algorithm::Depthwise
        } else if winograd_fits(&self.window, self.group) && c >= 8 && m >= 8 {
            if h.min(w) >= 8 {
                Algorithm::Winograd(Tile::F4)
            } else {
                Algorithm::Winograd(Tile::F2)
            }
        } else {
            Algorithm::Gemm
        };
        let macs = n * m * cg * kh * kw * h * w;
        let threads = if threads > 1 && macs >= 1 << 21 {
            Threads::All
        } else {
            Threads::One
        };
        Choice { algorithm, threads }
    }

    fn plan(&self, choice: Choice) -> ConvPlan {
        let winograd = match choice.algorithm {
            Algorithm::Winograd(tile) => {
                let [m, c, _, _] = shape4(self.weights);
                Some(Winograd::new(tile, self.weights.data(), m, c))
            }
            _ => None,
        };
        let [m, cg, kh, kw] = shape4(self.weights);
        let mg = m / self.group.max(1);
        let groups = self.weights.data().chunks_exact((mg * cg * kh * kw).max(1));
        let packed = match choice.algorithm {
            Algorithm::Packed => Some(
                groups
                    .map(|w| PackedFilters::new(w, mg, cg * kh * kw))
                    .collect(),
            ),
            Algorithm::Implicit => Some(
                groups
                    .map(|w| PackedFilters::by_taps(w, mg, cg, kh * kw))
                    .collect(),
            ),
            _ => None,
        };
        ConvPlan {
            choice,
            winograd,
            packed,
        }
    }

    /// Times every candidate on a synthetic input of the real shape and returns the one with
    /// the lowest time, and how many runs that took. Candidates take turns, round after
    /// round, so a slow moment of the machine hits them all alike; the first round only warms
    /// caches and buffers. Large convolutions stop after the first timed round once they have
    /// used a quarter of a second, so a big model's session does not take minutes to create.
    fn fastest(&self, candidates: &[Choice], threads: usize) -> (Option<Choice>, usize) {
        const ROUNDS: usize = 3;
        const BUDGET: f64 = 0.25;
        let started = Instant::now();
        let x = synthetic(self.input);
        let args = ConvArgs {
            x: &x,
            weights: self.weights,
            bias: self.bias,
            window: self.window.clone(),
            group: self.group,
            relu: self.relu,
        };
        let plans: Vec<ConvPlan> = candidates.iter().map(|&c| self.plan(c)).collect();
        let mut times = vec![Vec::with_capacity(ROUNDS); plans.len()];
        let mut runs = 0;
        // Timed as they will run: with the other workers awake (see `crate::awake`).
        crate::awake(threads, || {
            for round in 0..=ROUNDS {
                if round > 1 && started.elapsed().as_secs_f64() > BUDGET {
                    break;
                }
                runs += plans.len();
                for (plan, times) in plans.iter().zip(&mut times) {
                    let start = Instant::now();
                    let out = plan.run(&args, threads);
                    let seconds = start.elapsed().as_secs_f64();
                    if round > 0 && out.is_ok() {
                        times.push(seconds);
                    }
                    std::hint::black_box(out).ok();
                }
            }
        });
        // The fastest round of each: another process taking the core only ever adds time,
        // so the minimum is the candidate's own cost with the least of that noise.
        let fastest: Vec<f64> = times
            .iter()
            .map(|t| t.iter().copied().fold(f64::INFINITY, f64::min))
            .collect();
        let best = (0..candidates.len())
            .filter(|&i| fastest[i].is_finite())
            .min_by(|&a, &b| fastest[a].total_cmp(&fastest[b]))
            .map(|i| candidates[i]);
        (best, runs)
    }
}

fn shape4(t: &Tensor) -> [usize; 4] {
    match *t.shape() {
        [a, b, c, d] => [a, b, c, d],
        _ => [0; 4],
    }
}

/// Checks that an output slot holds exactly the `len` elements a convolution produces.
fn fits(slot: usize, len: usize) -> Result<(), String> {
    if slot == len {
        Ok(())
    } else {
        Err(format!(
            "the output slot holds {slot} elements; the convolution produces {len}"
        ))
    }
}

fn winograd_fits(window: &Window, group: usize) -> bool {
    window.kernel == [3, 3] && window.strides == [1, 1] && window.dilations == [1, 1] && group == 1
}

impl ConvPlan {
    /// The algorithm and threads chosen.
    pub(crate) fn choice(&self) -> Choice {
        self.choice
    }

    /// Runs the convolution (all images) with the planned algorithm.
    pub(crate) fn run(&self, args: &ConvArgs, session_threads: usize) -> Result<Tensor, String> {
        let ConvArgs {
            x,
            weights,
            bias,
            ref window,
            group,
            relu,
        } = *args;
        let threads = self.threads(session_threads);
        if self.choice.algorithm == Algorithm::Gemm {
            let out = conv::conv(x, weights, bias, window, group, threads)?;
            return Ok(if relu {
                crate::ops::elementwise::Unary::Relu.apply(out)
            } else {
                out
            });
        }
        let ([n, c, h, w], [m, oh, ow]) = self.shapes(x, weights, window, group)?;
        let epilogue = Epilogue {
            bias: bias.map(|b| b.data()),
            relu,
        };
        if let Some(filters) = self.packed_filters() {
            let len = n * m * oh * ow;
            let mut data: Vec<f32> = Vec::with_capacity(len);
            let out = &mut data.spare_capacity_mut()[..len];
            self.run_packed(filters, x, window, out, epilogue, threads)?;
            // SAFETY: the packed kernels write every output element (their tiles cover all
            // filters and pixels), and `len` is the capacity asked for.
            unsafe { data.set_len(len) };
            return Tensor::new(vec![n, m, oh, ow], data).map_err(|e| e.to_string());
        }
        let mut out = Tensor::zeros(vec![n, m, oh, ow]);
        for image in 0..n {
            let input = &x.data()[image * c * h * w..(image + 1) * c * h * w];
            let dst = &mut out.data_mut()[image * m * oh * ow..(image + 1) * m * oh * ow];
            match (&self.winograd, self.choice.algorithm) {
                (Some(plan), _) => plan.run(
                    (input, [h, w]),
                    (window.pads[0], window.pads[1]),
                    (dst, [oh, ow]),
                    epilogue,
                    threads,
                ),
                (None, Algorithm::Depthwise) => depthwise::depthwise(
                    (input, [c, h, w]),
                    weights.data(),
                    window,
                    (dst, [oh, ow]),
                    epilogue,
                    threads,
                ),
                (None, other) => return Err(format!("{other:?} was planned without its data")),
            }
        }
        Ok(out)
    }

    /// [`ConvPlan::run`] writing the output into `out`, which must hold exactly its
    /// elements; every element of `out` is written when this returns `Ok`. The packed
    /// kernels write there directly; the others compute a tensor that is copied in.
    pub(crate) fn run_into(
        &self,
        args: &ConvArgs,
        session_threads: usize,
        out: &mut [MaybeUninit<f32>],
    ) -> Result<(), String> {
        let Some(filters) = self.packed_filters() else {
            let computed = self.run(args, session_threads)?;
            fits(out.len(), computed.data().len())?;
            for (slot, &value) in out.iter_mut().zip(computed.data()) {
                slot.write(value);
            }
            return Ok(());
        };
        let ([n, _, _, _], [m, oh, ow]) =
            self.shapes(args.x, args.weights, &args.window, args.group)?;
        fits(out.len(), n * m * oh * ow)?;
        let epilogue = Epilogue {
            bias: args.bias.map(|b| b.data()),
            relu: args.relu,
        };
        let threads = self.threads(session_threads);
        self.run_packed(filters, args.x, &args.window, out, epilogue, threads)
    }

    /// Runs a packed or implicit plan into `out` (the output's exact length).
    fn run_packed(
        &self,
        filters: &[PackedFilters],
        x: &Tensor,
        window: &Window,
        out: &mut [MaybeUninit<f32>],
        epilogue: Epilogue,
        threads: usize,
    ) -> Result<(), String> {
        let input = shape4(x);
        let [_, _, h, w] = input;
        let output = window.output(h, w)?;
        let kernel = match self.choice.algorithm {
            Algorithm::Packed => packed::conv,
            _ => packed::implicit,
        };
        kernel(
            x.data(),
            input,
            filters,
            window,
            (out, output),
            epilogue,
            threads,
        );
        Ok(())
    }

    /// The filters of a packed or implicit plan.
    fn packed_filters(&self) -> Option<&[PackedFilters]> {
        match self.choice.algorithm {
            Algorithm::Packed | Algorithm::Implicit => self.packed.as_deref(),
            _ => None,
        }
    }

    fn threads(&self, session_threads: usize) -> usize {
        match self.choice.threads {
            Threads::One => 1,
            Threads::All => session_threads,
        }
    }

    /// The input's NCHW dimensions and the output's filters and size, checked against the
    /// weights.
    fn shapes(
        &self,
        x: &Tensor,
        weights: &Tensor,
        window: &Window,
        group: usize,
    ) -> Result<([usize; 4], [usize; 3]), String> {
        let [n, c, h, w] = match *x.shape() {
            [n, c, h, w] => [n, c, h, w],
            ref other => return Err(format!("input must be 4-D (NCHW), got {other:?}")),
        };
        let channels = weights.shape()[1] * group;
        if c != channels {
            return Err(format!(
                "input has {c} channels; the weights expect {channels}"
            ));
        }
        let [oh, ow] = window.output(h, w)?;
        Ok(([n, c, h, w], [weights.shape()[0], oh, ow]))
    }
}

/// The convolutions of a graph whose weights are constant and whose input shape is static.
fn conv_sites(graph: &Graph) -> Vec<(usize, ConvSite<'_>)> {
    let mut sites = Vec::new();
    for (index, node) in graph.nodes.iter().enumerate() {
        let Op::Conv {
            spatial,
            group,
            relu,
        } = &node.op
        else {
            continue;
        };
        let constant = |i: usize| match node.inputs.get(i).and_then(|n| graph.constants.get(n)) {
            Some(Value::F32(t)) => Some(t),
            _ => None,
        };
        let input = node
            .inputs
            .first()
            .and_then(|name| graph.value_info.get(name))
            .and_then(|info| info.shape.as_deref());
        let (Some(&[n, c, h, w]), Some(weights)) = (input, constant(1)) else {
            continue;
        };
        let [_, _, kh, kw] = shape4(weights);
        if kh == 0
            || kw == 0
            || (node.inputs.len() > 2 && !node.inputs[2].is_empty() && constant(2).is_none())
        {
            continue;
        }
        sites.push((
            index,
            ConvSite {
                node,
                input: [n, c, h, w],
                weights,
                bias: constant(2),
                window: spatial.window([kh, kw], [h, w]),
                group: *group,
                relu: *relu,
            },
        ));
    }
    sites
}

/// This device, as the cache key sees it.
fn device() -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        // Leaves 0x80000002..4 hold the CPU's brand string.
        let brand: Vec<u8> = (0x8000_0002u32..=0x8000_0004)
            .flat_map(|leaf| {
                let r = __cpuid(leaf);
                [r.eax, r.ebx, r.ecx, r.edx]
                    .into_iter()
                    .flat_map(u32::to_le_bytes)
            })
            .filter(|&b| b != 0)
            .collect();
        let features = [
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
        ];
        let simd: Vec<&str> = features.iter().filter(|f| f.1).map(|f| f.0).collect();
        format!(
            "{} [{}] kernels {:?} {cores} cores",
            String::from_utf8_lossy(&brand).trim(),
            simd.join(","),
            packed::Isa::detect()
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        format!("{} {cores} cores", std::env::consts::ARCH)
    }
}

/// The cache file for a model on this device and engine version, at this thread count.
/// The session's thread count is part of the key: the best algorithm on two threads is not
/// the best on one.
fn cache_file(dir: &std::path::Path, model_digest: &str, threads: usize) -> PathBuf {
    let key = Sha256::digest(format!(
        "{model_digest}\n{}\n{}\n{threads} threads",
        device(),
        env!("CARGO_PKG_VERSION")
    ));
    dir.join(format!("search-{}.txt", hex::encode(&key[..12])))
}

/// Cached choices: site key → choice. Unreadable lines are skipped (they are re-measured).
fn read_cache(path: &std::path::Path) -> HashMap<String, Choice> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return HashMap::new();
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (key, rest) = line.rsplit_once('\t')?;
            let (key, algorithm) = key.rsplit_once('\t')?;
            Some((
                key.to_owned(),
                Choice {
                    algorithm: parse_algorithm(algorithm)?,
                    threads: match rest {
                        "one" => Threads::One,
                        "all" => Threads::All,
                        _ => return None,
                    },
                },
            ))
        })
        .collect()
}

fn parse_algorithm(s: &str) -> Option<Algorithm> {
    Some(match s {
        "gemm" => Algorithm::Gemm,
        "packed" => Algorithm::Packed,
        "implicit" => Algorithm::Implicit,
        "winograd-f2" => Algorithm::Winograd(Tile::F2),
        "winograd-f4" => Algorithm::Winograd(Tile::F4),
        "depthwise" => Algorithm::Depthwise,
        _ => return None,
    })
}

fn algorithm_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::Gemm => "gemm",
        Algorithm::Packed => "packed",
        Algorithm::Implicit => "implicit",
        Algorithm::Winograd(Tile::F2) => "winograd-f2",
        Algorithm::Winograd(Tile::F4) => "winograd-f4",
        Algorithm::Depthwise => "depthwise",
    }
}

/// Writes the choices (through a temporary file, so a reader never sees half of one).
fn write_cache(
    path: &std::path::Path,
    device: &str,
    entries: &[(String, Choice)],
) -> std::io::Result<()> {
    let mut text = format!(
        "# walle-engine {} search choices on {device}\n",
        env!("CARGO_PKG_VERSION")
    );
    for (key, choice) in entries {
        let threads = match choice.threads {
            Threads::One => "one",
            Threads::All => "all",
        };
        text.push_str(&format!(
            "{key}\t{}\t{threads}\n",
            algorithm_name(choice.algorithm)
        ));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)
}

/// A deterministic input of `shape` for timing (values in [-1, 1)).
fn synthetic(shape: [usize; 4]) -> Tensor {
    let len: usize = shape.iter().product();
    let mut state = 0x2545_f491_u32;
    let data = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect();
    // The length matches the shape by construction; zeros would time the same.
    Tensor::new(shape.to_vec(), data).unwrap_or_else(|_| Tensor::zeros(shape.to_vec()))
}

/// Chooses an algorithm for every convolution it can plan; returns the plans by node index.
pub(crate) fn plan_graph(
    graph: &Graph,
    model_digest: Option<&str>,
    options: &Options,
) -> (Vec<Option<ConvPlan>>, SearchReport) {
    let start = Instant::now();
    let sites = conv_sites(graph);
    let cache_path = match (options.search, &options.cache_dir) {
        (Search::Measure, Some(dir)) => {
            model_digest.map(|digest| cache_file(dir, digest, options.threads))
        }
        _ => None,
    };
    let cached = cache_path.as_deref().map(read_cache).unwrap_or_default();
    let mut plans = vec![None; graph.nodes.len()];
    let mut report = SearchReport {
        search: options.search,
        seconds: 0.0,
        measured: 0,
        cached: 0,
        cache_file: cache_path.clone(),
        cache_error: None,
        choices: Vec::new(),
    };
    let mut entries = Vec::with_capacity(sites.len());
    for (index, site) in &sites {
        let key = site.key();
        let choice = match (options.search, cached.get(&key)) {
            (Search::CostModel, _) => site.cost_model(options.threads),
            (Search::Measure, Some(&choice))
                if site.candidates(options.threads).contains(&choice) =>
            {
                report.cached += 1;
                choice
            }
            (Search::Measure, _) => {
                let candidates = site.candidates(options.threads);
                let (best, runs) = site.fastest(&candidates, options.threads);
                report.measured += runs;
                best.unwrap_or_else(|| site.cost_model(options.threads))
            }
        };
        plans[*index] = Some(site.plan(choice));
        report.choices.push((site.node.name.clone(), choice));
        entries.push((key, choice));
    }
    if let Some(path) = &cache_path
        && report.measured > 0
    {
        // A cache that cannot be written only costs the next session its search time.
        report.cache_error = write_cache(path, &device(), &entries)
            .err()
            .map(|e| format!("writing {}: {e}", path.display()));
    }
    report.seconds = start.elapsed().as_secs_f64();
    (plans, report)
}

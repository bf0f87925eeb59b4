//! The bit predictor of the context-mixing codec: context models over bit histories, a match
//! model, a gated linear mixer and two adaptive probability maps (SSE).
//!
//! Invariants:
//! - Integer arithmetic only, single-threaded, no dependence on the machine: a given sequence
//!   of bits gets the same predictions on every CPU, build and thread count. (The squash table
//!   is a constant; every other table derives from it and from integer rules.)
//! - Table sizes are a function of the chunk length alone, so the decoder rebuilds exactly the
//!   encoder's model from the stored length.
//! - Any change to what is predicted changes the format: it needs a new model version in the
//!   codec params (old versions keep their code), never an edit of this one.

/// Bit-history states: bounded counts of zeros and ones seen in a context, where a new bit
/// halves a large opposite count (recent history matters more in text).
struct States {
    /// `next[s][bit]`.
    next: Vec<[u8; 2]>,
    /// `(zeros, ones)` of each state.
    counts: Vec<(u16, u16)>,
}

/// Largest count a state remembers.
const STATE_LIMIT: u16 = 30;

impl States {
    fn build() -> States {
        let step = |(n0, n1): (u16, u16), bit: u32| -> (u16, u16) {
            let (mut a, mut b) = if bit == 0 { (n0, n1) } else { (n1, n0) };
            a = (a + 1).min(STATE_LIMIT);
            if b > 2 {
                b = b / 2 + 1;
            }
            if bit == 0 {
                (a, b)
            } else {
                (b, a)
            }
        };
        // Breadth-first from the empty state: deterministic numbering, state 0 is "never seen".
        let mut counts = vec![(0u16, 0u16)];
        let mut next: Vec<[u8; 2]> = Vec::new();
        let mut i = 0;
        while i < counts.len() {
            let mut nx = [0u8; 2];
            for bit in 0..2 {
                let t = step(counts[i], bit);
                let id = match counts.iter().position(|c| *c == t) {
                    Some(p) => p,
                    None => {
                        counts.push(t);
                        counts.len() - 1
                    }
                };
                nx[bit as usize] = id as u8;
            }
            next.push(nx);
            i += 1;
        }
        debug_assert!(counts.len() <= 256);
        States { next, counts }
    }
}

/// `squash(x) = 4096 / (1 + e^(-x/256))` at x = -2048, -1920, ..., 2048 (rounded).
const SQUASH_POINTS: [i32; 33] = [
    1, 2, 4, 6, 10, 17, 27, 45, 74, 120, 194, 311, 488, 747, 1102, 1546, 2048, 2550, 2994, 3349,
    3608, 3785, 3902, 3976, 4022, 4051, 4069, 4079, 4086, 4090, 4092, 4094, 4095,
];

/// Stretch-domain value (-2047..=2047) to a 12-bit probability, by linear interpolation.
#[inline]
fn squash_calc(x: i32) -> i32 {
    if x >= 2047 {
        return 4095;
    }
    if x <= -2047 {
        return 1;
    }
    let w = x & 127;
    let i = ((x >> 7) + 16) as usize;
    (SQUASH_POINTS[i] * (128 - w) + SQUASH_POINTS[i + 1] * w + 64) >> 7
}

/// Shared lookup tables (built once per process).
struct Tables {
    states: States,
    /// `squash` for x + 2048.
    squash: Vec<i16>,
    /// Inverse of `squash`: ln(p / (1 - p)) scaled to -2047..=2047, for 12-bit p.
    stretch: Vec<i16>,
    /// 65536 / (n + 1.5), the adaptation rate of a state map entry seen n times.
    recip: Vec<u32>,
}

fn tables() -> &'static Tables {
    static T: std::sync::OnceLock<Tables> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let squash: Vec<i16> = (-2048..2048).map(|x| squash_calc(x) as i16).collect();
        let mut stretch = vec![0i16; 4096];
        let mut pi = 0usize;
        for x in -2047..=2047i32 {
            let v = squash_calc(x) as usize;
            for s in stretch.iter_mut().take(v + 1).skip(pi) {
                *s = x as i16;
            }
            pi = v + 1;
        }
        for s in stretch.iter_mut().skip(pi) {
            *s = 2047;
        }
        let recip = (0..1024u32).map(|n| 131_072 / (2 * n + 3)).collect();
        Tables {
            states: States::build(),
            squash,
            stretch,
            recip,
        }
    })
}

#[inline]
fn squash(t: &Tables, x: i32) -> i32 {
    t.squash[(x.clamp(-2047, 2047) + 2048) as usize] as i32
}

#[inline]
fn stretch(t: &Tables, p: i32) -> i32 {
    t.stretch[p as usize] as i32
}

/// Adaptive map from a small context (a bit-history state, a match length) to a probability:
/// 22-bit probability and 10-bit count per entry.
#[derive(Clone)]
struct StateMap {
    t: Vec<u32>,
    limit: u32,
}

impl StateMap {
    fn new(n: usize, limit: u32) -> StateMap {
        StateMap {
            t: vec![1 << 31; n],
            limit,
        }
    }

    /// Start each state at the frequency its counts imply.
    fn for_states(st: &States, limit: u32) -> StateMap {
        let mut m = StateMap::new(256, limit);
        for (i, &(n0, n1)) in st.counts.iter().enumerate() {
            let p = ((2 * n1 as u64 + 1) << 22) / (2 * (n0 as u64 + n1 as u64) + 2);
            m.t[i] = (p as u32) << 10;
        }
        m
    }

    /// 12-bit probability of a 1 in context `cx`.
    #[inline]
    fn p(&self, cx: usize) -> i32 {
        (self.t[cx] >> 20) as i32
    }

    #[inline]
    fn update(&mut self, t: &Tables, cx: usize, bit: u32) {
        let e = self.t[cx];
        let n = e & 1023;
        let p = (e >> 10) as i64;
        let target = (bit as i64) << 22;
        let np = p + (((target - p) * t.recip[n as usize] as i64) >> 16);
        let n = if n < self.limit { n + 1 } else { n };
        self.t[cx] = ((np.clamp(0, (1 << 22) - 1) as u32) << 10) | n;
    }
}

/// Adaptive probability map: refines a probability given a context, interpolating between 33
/// points of the stretched input.
#[derive(Clone)]
struct Apm {
    t: Vec<u16>,
    idx: usize,
}

impl Apm {
    fn new(t: &Tables, n: usize) -> Apm {
        let mut v = Vec::with_capacity(n * 33);
        for _ in 0..n {
            for j in 0..33 {
                v.push((squash(t, (j - 16) * 128) * 16) as u16);
            }
        }
        Apm { t: v, idx: 0 }
    }

    #[inline]
    fn pp(&mut self, t: &Tables, pr: i32, cx: usize) -> i32 {
        let s = stretch(t, pr) + 2048;
        let lo = (s >> 7) as usize;
        let w = s & 127;
        self.idx = cx * 33 + lo + ((w >> 6) as usize);
        let base = cx * 33 + lo;
        ((self.t[base] as i32 * (128 - w) + self.t[base + 1] as i32 * w) >> 11).clamp(1, 4095)
    }

    #[inline]
    fn update(&mut self, bit: u32) {
        let g = ((bit as i32) << 16) + ((bit as i32) << 6) - bit as i32 - bit as i32;
        let v = self.t[self.idx] as i32;
        self.t[self.idx] = (v + ((g - v) >> 6)) as u16;
    }
}

/// Inputs to the mixer.
const N_IN: usize = 11;

/// A gated linear mixer in the stretch domain: one weight vector per selector value.
#[derive(Clone)]
struct Mixer {
    w: Vec<i32>,
    sel: usize,
    pr: i32,
    rate: i32,
}

impl Mixer {
    fn new(sets: usize, rate: i32) -> Mixer {
        Mixer {
            w: vec![1 << 14; sets * N_IN],
            sel: 0,
            pr: 2048,
            rate,
        }
    }

    #[inline]
    fn mix(&mut self, t: &Tables, x: &[i32; N_IN], sel: usize) -> i32 {
        self.sel = sel * N_IN;
        let w = &self.w[self.sel..self.sel + N_IN];
        let mut dot: i64 = 0;
        for i in 0..N_IN {
            dot += x[i] as i64 * w[i] as i64;
        }
        let s = (dot >> 16).clamp(-2047, 2047) as i32;
        self.pr = squash(t, s);
        s
    }

    #[inline]
    fn update(&mut self, x: &[i32; N_IN], bit: u32) {
        let err = (((bit as i32) << 12) - self.pr) * self.rate;
        let w = &mut self.w[self.sel..self.sel + N_IN];
        for i in 0..N_IN {
            w[i] = (w[i] + ((x[i] * err) >> 12)).clamp(-(1 << 24), 1 << 24);
        }
    }
}

/// Hashed context models whose contexts are kept in 16-byte buckets: a check byte and the 15
/// bit-history states of one nibble's binary tree.
const HASHED: usize = 7;

/// Shortest repeat the match model follows.
const MATCH_MIN: usize = 6;

#[inline]
fn hash(a: u64, b: u64) -> u64 {
    let h = (a ^ 0x9e37_79b9_7f4a_7c15).wrapping_mul(0xff51_afd7_ed55_8ccd) ^ b;
    let h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 29)
}

/// The whole predictor state. `Clone` is how a primed model is reused for many chunks.
#[derive(Clone)]
pub(super) struct Model {
    /// Bucket tables of the hashed models (shared, 16 bytes per bucket).
    table: Vec<u8>,
    bucket_bits: u32,
    /// Order-0 and order-1 states, directly indexed.
    t0: Vec<u8>,
    t1: Vec<u8>,
    /// Context hash of each hashed model for the current byte.
    hashes: [u64; HASHED],
    /// Bucket offset of each hashed model for the current nibble.
    buckets: [usize; HASHED],
    /// Per model: the state map and the slot of the state in use.
    maps: Vec<StateMap>,
    slots: [usize; HASHED + 2],
    /// Match model: history, hash table of positions, the current match.
    hist: Vec<u8>,
    match_table: Vec<u32>,
    match_bits: u32,
    match_ptr: usize,
    match_len: usize,
    match_map: StateMap,
    match_cx: usize,
    mixer: Mixer,
    mixer2: Mixer,
    final_mix: Mixer,
    apm1: Apm,
    apm2: Apm,
    x: [i32; N_IN],
    x2: [i32; N_IN],
    /// Partial byte with a leading 1, bits seen in it, the last 8 bytes.
    c0: u32,
    bits: u32,
    c8: u64,
    word: u64,
    word_prev: u64,
    line_start: usize,
    line_prev: usize,
    pr: i32,
}

impl Model {
    /// A fresh model sized for a chunk of `len` bytes (`bucket_bits` and `match_bits` are the
    /// log2 table sizes; see `Model::for_len`).
    pub fn new(bucket_bits: u32, match_bits: u32) -> Model {
        let t = tables();
        let mut maps = Vec::with_capacity(HASHED + 2);
        for _ in 0..HASHED + 2 {
            maps.push(StateMap::for_states(&t.states, 1023));
        }
        Model {
            table: vec![0; 16usize << bucket_bits],
            bucket_bits,
            t0: vec![0; 256],
            t1: vec![0; 65536],
            hashes: [0; HASHED],
            buckets: [0; HASHED],
            maps,
            slots: [0; HASHED + 2],
            hist: Vec::new(),
            match_table: vec![0; 1usize << match_bits],
            match_bits,
            match_ptr: 0,
            match_len: 0,
            match_map: StateMap::new(64, 1023),
            match_cx: 0,
            mixer: Mixer::new(256, 2),
            mixer2: Mixer::new(2048, 2),
            final_mix: Mixer::new(1, 8),
            apm1: Apm::new(t, 256),
            apm2: Apm::new(t, 65536),
            x: [0; N_IN],
            x2: [0; N_IN],
            c0: 1,
            bits: 0,
            c8: 0,
            word: 0,
            word_prev: 0,
            line_start: 0,
            line_prev: 0,
            pr: 2048,
        }
        .started()
    }

    fn started(mut self) -> Model {
        self.final_mix.w.iter_mut().for_each(|w| *w = 0);
        self.final_mix.w[0] = 1 << 15;
        self.final_mix.w[1] = 1 << 15;
        self.byte_contexts();
        self.nibble_contexts();
        self.predict();
        self
    }

    /// Table sizes (log2 buckets, log2 match slots) for a chunk of `len` bytes.
    pub fn sizes_for(len: usize) -> (u32, u32) {
        let lg = usize::BITS - len.max(1).leading_zeros();
        (lg.clamp(16, 21), lg.clamp(12, 22))
    }

    /// Keep what `primed` learned that does not depend on table sizes (state maps, mixers,
    /// probability maps); the context tables and history start empty.
    pub fn learn_from(&mut self, primed: &Model) {
        self.maps.clone_from(&primed.maps);
        self.match_map = primed.match_map.clone();
        self.mixer = primed.mixer.clone();
        self.mixer2 = primed.mixer2.clone();
        self.final_mix = primed.final_mix.clone();
        self.apm1 = primed.apm1.clone();
        self.apm2 = primed.apm2.clone();
        self.predict();
    }

    /// 12-bit probability that the next bit is a 1 (1..=4095).
    #[inline]
    pub fn p(&self) -> u32 {
        self.pr as u32
    }

    /// Learn the bit just coded and prepare the next prediction.
    #[inline]
    pub fn update(&mut self, bit: u32) {
        let t = tables();
        // Train.
        let bt = &mut self.table;
        for i in 0..HASHED {
            let s = self.slots[i];
            let st = bt[s] as usize;
            self.maps[i].update(t, st, bit);
            bt[s] = t.states.next[st][bit as usize];
        }
        let s0 = self.slots[HASHED];
        let st = self.t0[s0] as usize;
        self.maps[HASHED].update(t, st, bit);
        self.t0[s0] = t.states.next[st][bit as usize];
        let s1 = self.slots[HASHED + 1];
        let st = self.t1[s1] as usize;
        self.maps[HASHED + 1].update(t, st, bit);
        self.t1[s1] = t.states.next[st][bit as usize];
        if self.match_len > 0 {
            self.match_map.update(t, self.match_cx, bit);
        }
        self.mixer.update(&self.x, bit);
        self.mixer2.update(&self.x, bit);
        self.final_mix.update(&self.x2, bit);
        self.apm1.update(bit);
        self.apm2.update(bit);

        // Advance.
        self.c0 = (self.c0 << 1) | bit;
        self.bits += 1;
        if self.match_len > 0 {
            let pb = self.hist[self.match_ptr] as u32 | 0x100;
            if pb >> (8 - self.bits) != self.c0 {
                self.match_len = 0;
            }
        }
        if self.bits == 8 {
            let c = (self.c0 & 0xff) as u8;
            self.end_byte(c);
            self.c0 = 1;
            self.bits = 0;
            self.byte_contexts();
            self.nibble_contexts();
        } else if self.bits == 4 {
            self.nibble_contexts();
        }
        self.predict();
    }

    fn end_byte(&mut self, c: u8) {
        self.hist.push(c);
        self.c8 = (self.c8 << 8) | c as u64;
        let pos = self.hist.len();
        if c.is_ascii_alphabetic() {
            self.word = hash(self.word, c.to_ascii_lowercase() as u64);
        } else if self.word != 0 {
            self.word_prev = self.word;
            self.word = 0;
        }
        if c == b'\n' {
            self.line_prev = self.line_start;
            self.line_start = pos;
        }
        // Match model: extend the current match or look for a new one.
        if self.match_len > 0 {
            self.match_len += 1;
            self.match_ptr += 1;
        }
        if pos >= MATCH_MIN {
            let h = (hash(self.c8 & 0xffff_ffff_ffff, 0x4d) >> (64 - self.match_bits)) as usize;
            if self.match_len == 0 {
                let cand = self.match_table[h] as usize;
                if cand > 0 && cand < pos {
                    let mut l = 0;
                    while l < 65535 && l < cand && self.hist[cand - 1 - l] == self.hist[pos - 1 - l]
                    {
                        l += 1;
                    }
                    if l >= MATCH_MIN {
                        self.match_len = l;
                        self.match_ptr = cand;
                    }
                }
            }
            self.match_table[h] = pos as u32;
        }
        if self.match_ptr >= pos {
            self.match_len = 0;
        }
    }

    /// Context hashes of the hashed models for the byte about to be coded.
    fn byte_contexts(&mut self) {
        let c8 = self.c8;
        let pos = self.hist.len();
        let col = pos - self.line_start;
        let above = if self.line_start > self.line_prev && self.line_prev + col < self.line_start {
            self.hist[self.line_prev + col] as u64
        } else {
            0
        };
        self.hashes = [
            hash(2, c8 & 0xffff),
            hash(3, c8 & 0xff_ffff),
            hash(4, c8 & 0xffff_ffff),
            hash(6, c8 & 0xffff_ffff_ffff),
            if self.word != 0 {
                hash(hash(7, self.word), self.word_prev)
            } else {
                hash(hash(8, self.word_prev), c8 & 0xff)
            },
            hash(9, (above << 16) | ((c8 & 0xff) << 8) | col.min(255) as u64),
            hash(10, c8 & 0xff_ff00),
        ];
    }

    /// Find (or claim) each hashed model's bucket for the nibble about to be coded.
    fn nibble_contexts(&mut self) {
        let mask = (1usize << self.bucket_bits) - 1;
        for i in 0..HASHED {
            let h = if self.bits == 0 {
                self.hashes[i]
            } else {
                hash(self.hashes[i], self.c0 as u64)
            };
            let check = (h as u8) | 1;
            let b0 = (h >> (64 - self.bucket_bits)) as usize & mask;
            let b1 = b0 ^ 1;
            let t = &mut self.table;
            let off = if t[b0 * 16] == check {
                b0 * 16
            } else if t[b1 * 16] == check {
                b1 * 16
            } else {
                // Replace the bucket whose first state has seen less.
                let ts = tables();
                let seen = |s: u8| {
                    let (a, b) = ts.states.counts[s as usize];
                    a + b
                };
                let v = if seen(t[b0 * 16 + 1]) <= seen(t[b1 * 16 + 1]) {
                    b0
                } else {
                    b1
                };
                let o = v * 16;
                t[o..o + 16].fill(0);
                t[o] = check;
                o
            };
            self.buckets[i] = off;
        }
    }

    fn predict(&mut self) {
        let t = tables();
        // Node of the nibble tree: 1, 2-3, 4-7, 8-15.
        let nib = if self.bits < 4 {
            self.c0 as usize
        } else {
            (self.c0 as usize & ((1 << (self.bits - 4)) - 1)) | (1 << (self.bits - 4))
        };
        for i in 0..HASHED {
            let s = self.buckets[i] + nib;
            self.slots[i] = s;
            self.x[i] = stretch(t, self.maps[i].p(self.table[s] as usize));
        }
        let s0 = self.c0 as usize;
        self.slots[HASHED] = s0;
        self.x[HASHED] = stretch(t, self.maps[HASHED].p(self.t0[s0] as usize));
        let s1 = ((self.c8 as usize & 0xff) << 8) | self.c0 as usize;
        self.slots[HASHED + 1] = s1;
        self.x[HASHED + 1] = stretch(t, self.maps[HASHED + 1].p(self.t1[s1] as usize));
        // Match model: the predicted bit, weighted by how long the match has held.
        let mut lq = 0usize;
        if self.match_len > 0 {
            let pb = self.hist[self.match_ptr] as u32;
            let bit = (pb >> (7 - self.bits)) & 1;
            lq = if self.match_len < 16 {
                self.match_len
            } else {
                (16 + ((self.match_len - 16) >> 4)).min(31)
            };
            self.match_cx = lq * 2 + bit as usize;
            self.x[HASHED + 2] = stretch(t, self.match_map.p(self.match_cx));
        } else {
            self.x[HASHED + 2] = 0;
        }
        self.x[N_IN - 1] = 256;
        let s1m = self.mixer.mix(t, &self.x, self.c0 as usize);
        let lsel = if lq == 0 { 0 } else { 1 + (lq >> 3).min(6) };
        let sel2 = (lsel << 8) | (self.c8 as usize & 0xff);
        let s2m = self.mixer2.mix(t, &self.x, sel2);
        self.x2 = [0; N_IN];
        self.x2[0] = s1m;
        self.x2[1] = s2m;
        self.x2[2] = 256;
        self.final_mix.mix(t, &self.x2, 0);
        let pr = self.final_mix.pr.clamp(1, 4095);
        let a1 = self.apm1.pp(t, pr, self.c0 as usize);
        let a2 = self.apm2.pp(
            t,
            pr,
            (self.c0 as usize | ((self.c8 as usize & 0xff) << 8)) & 0xffff,
        );
        self.pr = ((pr + a1 + 6 * a2 + 4) >> 3).clamp(1, 4095);
    }
}

//! [`Rle`]: COCO run-length encoding byte-for-byte as `pycocotools.mask` (its C core,
//! `maskApi.c`) makes it: [`Rle::encode`] = `rleEncode`, [`Rle::to_string_counts`] =
//! `rleToString`, [`Rle::from_string_counts`] = `rleFrString`, [`Rle::area`] = `rleArea`,
//! [`Rle::bbox`] = `rleToBbox`; checked against pycocotools 2.0.11 on the committed cases
//! (`tests/fixtures/rle/`, `tools/reference/gen_rle.py`).

use serde_json::Value;

use super::mask::Mask;
use crate::{Error, Result};

/// A COCO run-length encoding: `counts` are run lengths over the pixels in **column-major**
/// order (down the first column, then the next), alternating background and foreground and
/// starting with background, so `counts[0]` is 0 when the first pixel is set (`maskApi.c`,
/// `rleEncode`). `sum(counts) == height * width` always holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rle {
    height: u32,
    width: u32,
    counts: Vec<u32>,
}

impl Rle {
    /// An RLE from its parts. Errors when the counts do not add up to `height * width` or the
    /// size exceeds `u32::MAX` pixels. pycocotools checks less: its `decode` refuses counts
    /// that run past the end ("Invalid RLE mask representation") but leaves the pixels after
    /// counts that stop short uninitialised (garbage). Zero-length runs are accepted, as
    /// pycocotools accepts them.
    pub fn new(height: u32, width: u32, counts: Vec<u32>) -> Result<Self> {
        let pixels = u64::from(height) * u64::from(width);
        if pixels > u64::from(u32::MAX) {
            return Err(Error::arg("size", format!("{height}x{width} = {pixels} pixels, over 2^32 - 1")));
        }
        let sum: u64 = counts.iter().map(|&c| u64::from(c)).sum();
        if sum != pixels {
            return Err(Error::arg(
                "counts",
                format!("runs add up to {sum} pixels, the {height}x{width} size has {pixels}"),
            ));
        }
        Ok(Self { height, width, counts })
    }

    /// Encodes a mask as pycocotools' `encode(np.asfortranarray(mask))` does. A mask with no
    /// pixels gives counts `[0]`, as `rleEncode` does.
    pub fn encode(mask: &Mask) -> Self {
        let (w, h) = (mask.width as usize, mask.height as usize);
        let mut counts = Vec::new();
        let (mut current, mut run) = (false, 0u32);
        for x in 0..w {
            for y in 0..h {
                let v = mask.data[y * w + x];
                if v != current {
                    counts.push(run);
                    (current, run) = (v, 0);
                }
                run += 1;
            }
        }
        counts.push(run);
        Self { height: mask.height, width: mask.width, counts }
    }

    /// Height (`size[0]`).
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Width (`size[1]`).
    pub fn width(&self) -> u32 {
        self.width
    }

    /// The run lengths, column-major, background first.
    pub fn counts(&self) -> &[u32] {
        &self.counts
    }

    /// The mask (pycocotools' `decode`).
    pub fn decode(&self) -> Mask {
        let (w, h) = (self.width as usize, self.height as usize);
        // `new` checked the size, and the counts add up to it.
        let mut mask = Mask { width: self.width, height: self.height, data: vec![false; w * h] };
        let mut pos = 0usize;
        for (i, &c) in self.counts.iter().enumerate() {
            if i % 2 == 1 {
                for p in pos..pos + c as usize {
                    mask.data[(p % h) * w + p / h] = true;
                }
            }
            pos += c as usize;
        }
        mask
    }

    /// Number of foreground pixels: the sum of the odd-indexed counts (`rleArea`).
    pub fn area(&self) -> u64 {
        self.counts.iter().skip(1).step_by(2).map(|&c| u64::from(c)).sum()
    }

    /// COCO `[x, y, width, height]` as `rleToBbox` computes it (pycocotools' `toBbox`, which
    /// returns these integers as float64), ported step for step from pycocotools 2.0.11's
    /// `maskApi.c` in its 32-bit arithmetic: a trailing background run is dropped
    /// (`m = m / 2 * 2`), `[0, 0, 0, 0]` when no run is left, foreground runs of length 0 are
    /// skipped, and a foreground run spanning columns takes the full height. For canonical
    /// counts (what [`Rle::encode`] gives) this is the tight box, [`Mask::bbox`]. Quirk kept
    /// for non-canonical counts whose foreground runs are all empty (e.g. `[1, 0, 3]`):
    /// pycocotools returns `[w, h, 1 - w, 1 - h]` wrapped to 32 bits, and so does this.
    pub fn bbox(&self) -> [u32; 4] {
        let (h, w) = (self.height, self.width);
        let m = self.counts.len() / 2 * 2;
        if m == 0 {
            return [0; 4];
        }
        let (mut xs, mut ys, mut xe, mut ye, mut cc) = (w, h, 0u32, 0u32, 0u32);
        for (j, &count) in self.counts[..m].iter().enumerate() {
            let start = cc;
            cc = cc.wrapping_add(count);
            if j % 2 == 0 || count == 0 {
                continue;
            }
            // A nonzero foreground run means h > 0 (the counts add up to h * w).
            let (y_start, y_end) = (start % h, (cc - 1) % h);
            let (x_start, x_end) = ((start - y_start) / h, (cc - 1 - y_end) / h);
            xs = xs.min(x_start);
            xe = xe.max(x_end);
            if x_start < x_end {
                (ys, ye) = (0, h - 1);
            } else {
                (ys, ye) = (ys.min(y_start), ye.max(y_end));
            }
        }
        [xs, ys, xe.wrapping_sub(xs).wrapping_add(1), ye.wrapping_sub(ys).wrapping_add(1)]
    }

    /// pycocotools' compressed counts string (`rleToString`): each count, from the fourth on
    /// replaced by its difference with the count two before (`i > 2` in `maskApi.c`, so
    /// `counts[2]` is stored as is), is written as signed 5-bit groups, least significant
    /// first, one character each: `48 + group`, plus 32 when more groups follow. Characters
    /// are `'0'..='o'`, backslash included (JSON escapes it).
    pub fn to_string_counts(&self) -> String {
        let mut s = String::with_capacity(self.counts.len() * 2);
        for (i, &c) in self.counts.iter().enumerate() {
            let mut x = i64::from(c);
            if i > 2 {
                x -= i64::from(self.counts[i - 2]);
            }
            loop {
                let mut group = (x & 0x1f) as u8;
                x >>= 5;
                let more = if group & 0x10 != 0 { x != -1 } else { x != 0 };
                if more {
                    group |= 0x20;
                }
                s.push(char::from(group + 48));
                if !more {
                    break;
                }
            }
        }
        s
    }

    /// Parses pycocotools' compressed counts string (`rleFrString`) for a `height × width`
    /// mask. Unlike pycocotools, which reads any bytes and trusts the result, it errors on a
    /// character outside `'0'..='o'`, a truncated last count, a count over 7 characters, a
    /// negative or over-32-bit count, or counts not adding up to `height * width`.
    pub fn from_string_counts(s: &str, height: u32, width: u32) -> Result<Self> {
        let bad = |message: String| Error::arg("counts", message);
        let bytes = s.as_bytes();
        let mut counts: Vec<u32> = Vec::new();
        let mut p = 0;
        while p < bytes.len() {
            let (mut x, mut k) = (0i64, 0u32);
            loop {
                let Some(&b) = bytes.get(p) else {
                    return Err(bad(format!("string ends inside a count (after {} counts)", counts.len())));
                };
                if !(48..=111).contains(&b) {
                    return Err(bad(format!("byte {b:#04x} at {p} is not an RLE character ('0'..='o')")));
                }
                if k == 7 {
                    return Err(bad(format!("count at byte {p} is longer than 7 characters")));
                }
                let c = i64::from(b - 48);
                x |= (c & 0x1f) << (5 * k);
                p += 1;
                k += 1;
                if c & 0x20 == 0 {
                    if c & 0x10 != 0 {
                        x |= -1i64 << (5 * k);
                    }
                    break;
                }
            }
            let m = counts.len();
            if m > 2 {
                x += i64::from(counts[m - 2]);
            }
            let count = u32::try_from(x).map_err(|_| bad(format!("count {m} decodes to {x}")))?;
            counts.push(count);
        }
        Self::new(height, width, counts)
    }

    /// `{"size": [h, w], "counts": "<string>"}`: pycocotools' `encode` output with the counts
    /// bytes decoded to `str`, as COCO result files store it.
    pub fn to_json(&self) -> Value {
        serde_json::json!({"size": [self.height, self.width], "counts": self.to_string_counts()})
    }

    /// [`Rle::to_json`] as text, byte for byte what Python's `json.dumps` writes for the
    /// pycocotools dict (`size` first, `", "` and `": "` separators); `serde_json::Value`
    /// itself does not keep key order.
    pub fn to_json_string(&self) -> String {
        let counts = Value::String(self.to_string_counts()).to_string();
        format!("{{\"size\": [{}, {}], \"counts\": {counts}}}", self.height, self.width)
    }

    /// The uncompressed form, `{"size": [h, w], "counts": [runs...]}` (COCO's `iscrowd`
    /// annotations).
    pub fn to_json_uncompressed(&self) -> Value {
        serde_json::json!({"size": [self.height, self.width], "counts": self.counts})
    }

    /// Reads `{"size": [h, w], "counts": ...}` with the counts either pycocotools' string or
    /// the uncompressed list of run lengths (what `frPyObjects` accepts).
    pub fn from_json(value: &Value) -> Result<Self> {
        let bad = |message: &str| Error::arg("rle", message.to_string());
        let size = value.get("size").and_then(Value::as_array).ok_or_else(|| bad("no \"size\": [h, w] array"))?;
        let dim = |v: &Value| v.as_u64().and_then(|v| u32::try_from(v).ok());
        let (height, width) = match size.as_slice() {
            [h, w] => (dim(h), dim(w)),
            _ => (None, None),
        };
        let (Some(height), Some(width)) = (height, width) else {
            return Err(bad("\"size\" must be [height, width], two non-negative 32-bit integers"));
        };
        match value.get("counts") {
            Some(Value::String(s)) => Self::from_string_counts(s, height, width),
            Some(Value::Array(list)) => {
                let counts = list.iter().map(dim).collect::<Option<Vec<u32>>>();
                let counts = counts.ok_or_else(|| bad("\"counts\" list must hold non-negative 32-bit integers"))?;
                Self::new(height, width, counts)
            }
            _ => Err(bad("no \"counts\" string or list")),
        }
    }
}

//! The one way vista calls the `gemm` crate: strided matrix views ([`MatRef`], [`MatMut`]) whose
//! bounds are checked when they are made, and [`matmul`], `dst ← [dst +] scale · lhs · rhs`.
//!
//! `gemm::gemm` takes 19 arguments — three raw pointers with column and row strides, flags and
//! scalars — and trusts all of them. Here a view is built from a slice (or, for tasks that write
//! disjoint parts of one buffer from several threads, from a raw pointer, unsafely), the shapes
//! are checked against each other, and the call is made in one place.

use std::marker::PhantomData;

pub use gemm::Parallelism;

/// Largest offset of a `rows × cols` view with strides `rs`, `cs` (0 for an empty view).
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// A read-only `rows × cols` f32 matrix: element `(i, j)` at `i·row_stride + j·col_stride`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    ptr: *const f32,
    rows: usize,
    cols: usize,
    rs: isize,
    cs: isize,
    _data: PhantomData<&'a [f32]>,
}

impl<'a> MatRef<'a> {
    /// The first `rows · cols` values of `data`, row-major.
    ///
    /// # Panics
    /// If `data` is shorter.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols, 1)
    }

    /// A view with the given strides (in elements) from the start of `data`.
    ///
    /// # Panics
    /// If an element would lie beyond `data`.
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> Self {
        assert!(
            extent(rows, cols, row_stride, col_stride) <= data.len(),
            "matrix view {rows}x{cols} (strides {row_stride}, {col_stride}) beyond a slice of {}",
            data.len()
        );
        Self { ptr: data.as_ptr(), rows, cols, rs: row_stride as isize, cs: col_stride as isize, _data: PhantomData }
    }

    /// The transpose, as a view of the same values.
    pub fn t(self) -> Self {
        Self { rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs, ..self }
    }
}

/// A writable `rows × cols` f32 matrix, as [`MatRef`].
#[derive(Debug)]
pub struct MatMut<'a> {
    ptr: *mut f32,
    rows: usize,
    cols: usize,
    rs: isize,
    cs: isize,
    _data: PhantomData<&'a mut [f32]>,
}

impl<'a> MatMut<'a> {
    /// The first `rows · cols` values of `data`, row-major.
    ///
    /// # Panics
    /// If `data` is shorter.
    pub fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        assert!(rows * cols <= data.len(), "matrix {rows}x{cols} beyond a slice of {}", data.len());
        Self { ptr: data.as_mut_ptr(), rows, cols, rs: cols as isize, cs: 1, _data: PhantomData }
    }

    /// A view over memory that other threads write too, in other places.
    ///
    /// # Safety
    /// Every element `ptr + i·row_stride + j·col_stride` must be valid for writes for `'a`, and
    /// no one else may read or write those elements meanwhile.
    pub unsafe fn from_raw(ptr: *mut f32, rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> Self {
        Self { ptr, rows, cols, rs: row_stride as isize, cs: col_stride as isize, _data: PhantomData }
    }
}

/// `dst ← scale · lhs · rhs`, or `dst ← dst + scale · lhs · rhs` when `accumulate`.
///
/// # Panics
/// If the shapes do not chain: `lhs` is `m × k`, `rhs` `k × n`, `dst` `m × n`.
pub fn matmul(dst: MatMut<'_>, lhs: MatRef<'_>, rhs: MatRef<'_>, scale: f32, accumulate: bool, par: Parallelism) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert!(
        rhs.rows == k && dst.rows == m && dst.cols == n,
        "matmul: [{m}, {k}] · [{}, {n}] into [{}, {}]",
        rhs.rows,
        dst.rows,
        dst.cols
    );
    // SAFETY: the views were checked against their slices when made (or promised by `from_raw`),
    // and the shapes chain.
    unsafe {
        gemm::gemm(
            m, n, k, dst.ptr, dst.cs, dst.rs, accumulate, lhs.ptr, lhs.cs, lhs.rs, rhs.ptr, rhs.cs, rhs.rs, 1.0, scale,
            false, false, false, par,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_of_transposed_views_equals_the_naive_product() {
        let a: Vec<f32> = (0..6).map(|v| v as f32).collect(); // [2, 3]
        let b: Vec<f32> = (0..12).map(|v| (v as f32) * 0.5 - 2.0).collect(); // [4, 3], used as [3, 4]ᵀ
        let mut out = vec![1f32; 8];
        matmul(
            MatMut::row_major(&mut out, 2, 4),
            MatRef::row_major(&a, 2, 3),
            MatRef::row_major(&b, 4, 3).t(),
            2.0,
            true,
            Parallelism::None,
        );
        for i in 0..2 {
            for j in 0..4 {
                let want = 1.0 + 2.0 * (0..3).map(|k| a[i * 3 + k] * b[j * 3 + k]).sum::<f32>();
                assert_eq!(out[i * 4 + j], want);
            }
        }
    }

    #[test]
    #[should_panic(expected = "beyond a slice")]
    fn a_view_past_its_slice_is_refused() {
        let a = [0f32; 5];
        let _ = MatRef::strided(&a, 2, 3, 3, 1);
    }
}

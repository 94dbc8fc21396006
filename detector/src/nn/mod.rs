//! Network modules in candle's style: one struct per block, `load` from named weights,
//! `impl Module`, a tracing span per block.

pub mod blocks;
pub mod conv;
mod cpu_conv;
mod cpu_decode;
mod cpu_gemm;
mod cpu_lanes;
mod cpu_pool;
pub(crate) use cpu_pool::cat_channels;
mod cpu_winograd;
pub(crate) mod fork_join;
pub mod head;

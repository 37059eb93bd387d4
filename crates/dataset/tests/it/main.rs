//! The dataset crate's integration tests, one binary (fast to link): fixtures generated from
//! fixed seeds into temp folders, one module per area.

mod bad_inputs;
mod batches;
mod check;
mod decode;
mod demo_data;
mod fixtures;
mod jpeg_pixels;
mod pil_parity;
mod real_inputs;
mod scan;

//! Training a convnet from scratch on an image-folder dataset: Chollet's small convnet
//! (*Deep Learning with Python* 5.2: four Conv2D + MaxPooling2D blocks, Flatten, Dense 512 relu,
//! Dense 1 sigmoid or N softmax) or a VGG16 of reduced width, with Keras initialisation, the
//! training crate's optimizers and head, and the augmentation crate's seeded transforms.
//!
//! What it trains is saved as two files: the conv base alone in the models crate's weights format
//! (named layers, `rescale` preprocessing, the layer list in the metadata), so `extract-features`
//! and `fine-tune` take it exactly like VGG16 weights; and the whole model (base + dense top).
//!
//! - [`data`]: splits decoded once into memory (RGB8 at the input size).
//! - [`net`]: the network (base + head in one `VarStore`) and the architectures on offer.
//! - [`train`]: the epoch loop (seeded order, augmentation and dropout per step, validation,
//!   best-epoch restore) and evaluation.

pub mod data;
pub mod net;
pub mod train;

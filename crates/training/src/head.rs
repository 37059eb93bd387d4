//! The training side of the seed's dense head: its loss. The head itself (`DenseHead`,
//! `HeadSpec`) and turning logits into classes or probabilities belong to the model
//! (`models::head`); they are re-exported here for the stages that train it.

use tch::{Kind, Tensor};

pub use models::head::{DenseHead, HeadSpec, predicted_classes as predict};

use crate::TrainError;

/// Mean loss of `logits` `[N, 1 | classes]` against class indices `labels` `[N]` (int64): binary
/// cross-entropy on the single logit for two classes (Keras `binary_crossentropy` after a
/// sigmoid), softmax cross-entropy otherwise (`sparse_categorical_crossentropy`).
pub fn loss(logits: &Tensor, labels: &Tensor) -> Result<Tensor, TrainError> {
    if logits.size()[1] == 1 {
        let targets = labels.f_to_kind(Kind::Float)?;
        Ok(logits.f_squeeze_dim(1)?.f_binary_cross_entropy_with_logits::<Tensor>(
            &targets,
            None,
            None,
            tch::Reduction::Mean,
        )?)
    } else {
        Ok(logits.f_cross_entropy_loss::<Tensor>(labels, None, tch::Reduction::Mean, -100, 0.0)?)
    }
}

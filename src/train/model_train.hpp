// The training step of the model is model::TrainModelT (model/model.hpp): the same layer
// functions as inference, over the parameter arena. These names keep the trainer's spelling.
#pragma once
#include "model/model.hpp"
#include "train/params.hpp"

namespace dsv3::train {

using dsv3::StepProfile;
using model::StepStats;
using model::TrainModel;
using model::TrainModelT;
using model::TrainOptions;

}  // namespace dsv3::train

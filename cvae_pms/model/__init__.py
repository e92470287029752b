"""The conditional VAE: networks (:mod:`.networks`), loss and annealing (:mod:`.cvae`),
fast posterior sampling (:mod:`.sampler`) and the model directory (:mod:`.rundir`)."""

"""The ViewFusion algorithm: schedule, poses & weights, noise, sampler loop, view cache, Pipeline API."""

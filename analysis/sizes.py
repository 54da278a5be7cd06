"""The study's analysis sizes per preset, its protocols and method labels: plain data, no imports, so
the `fasland study` parser can offer them without loading the study."""

# Grid sizes and probe sizes per preset: `demo` fits the whole study in minutes on a 2-core CPU. bottom_k: how many
# of the smallest eigenvalues (λ_min; 0: none); per_block 1: each block's λ_max (the report's sharpest block). Three
# switches (1 = on) add what the report does not show, at a cost: sample_growth λ_max at 1, 2, 4, … probe samples
# (twice the subsets' products), block_trace each block's trace beside its λ_max (trace_samples products per block),
# trajectory_ascent the SAM and GAC-FAS ascent points at every trajectory checkpoint (θ alone: k gradients per
# checkpoint; with them k + (k+1)k).
SWITCHES = {"bottom_k": 1, "per_block": 1, "sample_growth": 0, "block_trace": 0, "trajectory_ascent": 0}
SETTINGS = {
    "demo": {"x1d": "-1:1:17", "x2d": "-1:1:9", "interpolation": "-0.5:1.5:13", "pca_points": 9,
             "max_samples": 64, "top_k": 3, "tol": 1e-3, "max_iter": 40, "trace_samples": 10, "density_iter": 0,
             "sample_batches": 4, **SWITCHES, "attention_samples": 16},
    # `make demo` at 64 px: smaller grids and probe, one top eigenvalue, four probe subsets, no λ_min and no per-block
    # λ_max (they took half of the Hessian step's minutes; its minutes: README)
    "demo64": {"x1d": "-1:1:13", "x2d": "-1:1:7", "interpolation": "-0.5:1.5:9", "pca_points": 7,
               "max_samples": 32, "top_k": 1, "tol": 1e-3, "max_iter": 20, "trace_samples": 6, "density_iter": 0,
               "sample_batches": 4, **SWITCHES, "bottom_k": 0, "per_block": 0, "attention_samples": 16},
    "paper": {"x1d": "-1:1:51", "x2d": "-1:1:51", "interpolation": "-0.5:1.5:41", "pca_points": 41,
              "max_samples": 1024, "top_k": 5, "tol": 1e-4, "max_iter": 300, "trace_samples": 100, "density_iter": 80,
              "sample_batches": 8, **SWITCHES, "sample_growth": 1, "block_trace": 1, "trajectory_ascent": 1,
              "attention_samples": 64},
}
LEAVE_ONE_OUT = ("ICM2O", "OCM2I", "OCI2M", "OMI2C")
LABELS = {"erm": "ERM", "sam": "SAM", "gacfas": "GAC-FAS", "rfm": "RFM"}

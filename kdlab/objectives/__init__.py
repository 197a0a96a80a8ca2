"""Method objectives: `objective(outputs, batch) -> (loss, logs)`, built on `kdlab.divergences`.

One method's loss is one class in one module of this package, derived from
`kdlab.objectives.base.Objective`, and named by its module path in the method's preset
(`_target_: kdlab.objectives.hinton_kd.HintonKD`): nothing is registered here. The class says
which divergence it takes (`divergence_slot`), whether it needs intermediate features
(`needs_features`), and builds what depends on the models or the data in `prepare(context)`.
"""

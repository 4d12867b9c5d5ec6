"""The toy world, in one package: the procedurally generated shapes dataset (:mod:`.world`),
the tiny open_clip models of the model zoo (:mod:`.zoo`: their configs, recipes and shipped
weights) and building them from their recipes (:mod:`.build`).

The lower layers reach the toy world only through their tables, by name: the dataset registry
lists ``toy-shapes`` as ``"xbt_bench.toy.world:load_toy_dataset"`` and the model loader's table
of weight sources lists the ``zoo:`` kind as ``"xbt_bench.toy.zoo:zoo_weights"``, so a real
pair never imports it.
"""

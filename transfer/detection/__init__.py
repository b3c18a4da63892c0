"""Detection transfer: torchvision Faster R-CNN fine-tuned from SimCLR backbones.

The MoCo/detectron2 transfer protocol (He et al. 2020, "Momentum Contrast", Sec. 4.2) on
torchvision's Faster R-CNN (Ren et al. 2015): ResNet-18/34/50 backbones with FPN (Lin et al.
2017) or C4 (res5 as the ROI head), Pascal VOC XML and COCO JSON data, COCO and VOC metrics.

Modules, one concept each:

* ``config``        the ``DetectionConfig`` dataclasses (data, model, train, eval)
* ``structures``    image records, invalid-box sanitising, the torch Dataset and collate
* ``voc``, ``coco`` annotation readers; ``datasets`` resolves archives/folders and class lists
* ``weights``       backbone initialisation sources (run dir, any weights file through
                    ``probes.checkpoints.load_any``, random) and their normalisation
* ``backbone``      norm conversion (frozen BN / BN / SyncBN / GN), freezing, FPN and C4 bodies
* ``model``         ``build_detector``: Faster R-CNN FPN or C4
* ``schedule``      warm-up + step learning-rate schedule and the deterministic batch order
* ``train``         the iteration-based loop with atomic checkpoints and exact resume
* ``distributed``   torchrun/DDP helpers, no-ops in a single process
* ``voc_eval``, ``coco_eval``, ``evaluate``   metrics and inference
* ``record``        the result record (settings; ``probes.records.make_record``)
* ``command``       the ``simclr-transfer detection`` wrapper (config, engine, seeds, one record
                    per seed for either engine)
* ``detectron2_weights``, ``detectron2_config``   our ResNet keys <-> detectron2's, its config
* ``detectron2_engine``  ``--engine detectron2``: detectron2's Faster R-CNN, trainer and hooks
                         on the shared data, metrics and records (imported only for that engine)
"""

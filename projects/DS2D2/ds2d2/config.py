"""Config keys added by DS2D2 (``add_ds2d2_config``), each with the meaning it has for users.

Stage 1 (teacher) and plain students need no distillation key (their RetinaNet backbones read
``MODEL.DS2D2.P7_FROM_RELU_P6``); they use Detectron2's meta-architectures or ds2d2's ``RotatedRetinaNet``
(the horizontal Faster R-CNN with ds2d2's ``DS2D2RPN`` proposal generator).
Stage 2 sets ``MODEL.META_ARCHITECTURE: DS2D2Amplifier``; stage 3 sets
``MODEL.META_ARCHITECTURE: DS2D2Distiller``.

Also here: the small value helpers (``config_number``, ``model_num_classes``) and ``load_config``, the one
way a YAML file becomes a config (parsed safely: ``data.own.merge_config``). Whole-config checks are in
``checks.py``, above the distillation terms that import this module.
"""
import math
import os
from typing import Optional, Sequence, Tuple

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from ds2d2_onnx.image_io import DEFAULT_MAX_PIXELS

from .data.own import merge_config, register_own_datasets

AMPLIFIER_INITS = ("teacher", "scratch")  # MODEL.DS2D2.AMPLIFIER_INIT
IMPLICIT_INPUTS = ("raw", "adapted", "auto")  # MODEL.DS2D2.IMPLICIT_INPUT
LOSS_KEYS = ("EXPLICIT_LOW", "EXPLICIT_HIGH", "IMPLICIT_FULL", "IMPLICIT_HIGH")  # MODEL.DS2D2.LOSS weights


def add_ds2d2_config(cfg: CN) -> None:
    """Add DS2D2's keys (with their defaults) to a Detectron2 config, in place."""
    _C = cfg

    _C.MODEL.DS2D2 = CN()
    # Meta-architecture of the detector that the amplifier (stage 2) wraps and that the distiller (stage 3)
    # trains as the student: "RetinaNet" (dense family) or "GeneralizedRCNN" (two-stage family).
    _C.MODEL.DS2D2.DETECTOR = "RetinaNet"
    # Teacher's YAML config. Stage 3 builds the teacher from it only when no config.yaml was recorded next to
    # TEACHER_WEIGHTS (train_net.py writes one; it is used instead, its differences from this file logged);
    # tools/run_pipeline.py derives the stage-2 config from it. DS2D2Amplifier does not read it.
    # A relative path is taken from the current directory (run the tools from the repository root).
    _C.MODEL.DS2D2.TEACHER_CONFIG = ""
    # Teacher weights (.pth written by train_net.py, or a Detectron2 .pkl). Loaded strictly: any missing,
    # unexpected or mis-shaped tensor is an error, never a silently random teacher.
    _C.MODEL.DS2D2.TEACHER_WEIGHTS = ""
    # Stage 2 only: how the amplifier's head starts. "teacher": the whole teacher checkpoint is loaded, so the
    # head starts from the teacher's trained head (RetinaNet head; Faster R-CNN RPN + RoI box head), as the
    # authors' stage-2 configs do; "scratch": only the (frozen) backbone + FPN come from the teacher.
    _C.MODEL.DS2D2.AMPLIFIER_INIT = "teacher"
    # Stage 3 only: checkpoint of the trained DS2D2Amplifier (stage 2); only its head is used.
    _C.MODEL.DS2D2.AMPLIFIER_WEIGHTS = ""
    # Wavelet basis of the one-level DWT (any discrete wavelet of PyWavelets: "haar", "db2", "sym4", ...).
    # "haar" uses an exact fast path; the others go through pytorch_wavelets.
    _C.MODEL.DS2D2.WAVELET = "haar"
    # FPN levels compared between teacher and student (empty: every level both FPNs have at the same stride:
    # all of the student's for a same-family pair, P3-P6 for a mixed one).
    _C.MODEL.DS2D2.IN_FEATURES = []
    # One 1x1 adapter (no bias) shared by all levels, as the authors do; False: one adapter per level.
    _C.MODEL.DS2D2.SHARE_ADAPTER = True
    # Features fed to the amplifiers on the student side: "raw" (the authors' choice), "adapted" (after the
    # 1x1 adapter) or "auto" (raw when the student's FPN width equals the teacher's, adapted otherwise).
    _C.MODEL.DS2D2.IMPLICIT_INPUT = "auto"
    # True: when the distiller is built, copy every teacher tensor outside its ResNet trunk (the FPN and the
    # heads) into the student tensor of the same name and shape, the others keeping their own init (logged by
    # name), as FGD's and MGD's official recipes (init_student); an error if no weight fits (e.g. a narrower
    # FPN). MODEL.WEIGHTS (the ImageNet trunk) is loaded afterwards and holds no FPN or head tensor; a
    # --resume checkpoint replaces everything. Any method may use it (ds2d2/meta_arch/inherit.py).
    _C.MODEL.DS2D2.INHERIT_TEACHER_NECK_HEAD = False

    # Distillation terms the distiller adds to the student's detection losses (names registered in
    # ds2d2.distill, one file per method; each reads its own keys). DS2D2 = its explicit + implicit streams.
    _C.MODEL.DS2D2.TERMS = ["DS2D2Explicit", "DS2D2Implicit"]
    # FitNet term ("FitNet" in TERMS): weight of sum_l mean((adapter(S_l) - T_l)^2) over IN_FEATURES.
    _C.MODEL.DS2D2.FITNET = CN()
    _C.MODEL.DS2D2.FITNET.WEIGHT = 1.0
    # CrossKD term ("CrossKD" in TERMS; Wang et al., CVPR 2024; docs/baselines.md): the student's head
    # features through the frozen teacher's remaining head layers; these cross-head predictions mimic the
    # teacher's. Defaults: the authors' RetinaNet values (R-101 -> R-50 on COCO, batch 16 = 8 GPUs x 2 images,
    # 2x schedule, FPN width 256, 4-conv heads); both losses are divided by positive anchors (or averaged over
    # RoIs), so they do not grow with the width or the image size. RetinaNet needs the student's
    # MODEL.FPN.OUT_CHANNELS equal to the teacher's; Faster R-CNN uses the shared 1x1 adapters if they differ.
    _C.MODEL.DS2D2.CROSSKD = CN()
    # Weight of loss_crosskd_cls, >= 0: RetinaNet quality-focal KD (beta 1) / positive anchors (authors: 1.0);
    # Faster R-CNN KL at temperature 3, times T^2 (authors: 0.5, set by the faster_rcnn configs).
    _C.MODEL.DS2D2.CROSSKD.CLS_WEIGHT = 1.0
    # Weight of loss_crosskd_box, >= 0: RetinaNet GIoU of decoded boxes weighted by the teacher's max score /
    # positive anchors; Faster R-CNN L1 on the teacher-argmax class's deltas (authors: 1.0 for both).
    _C.MODEL.DS2D2.CROSSKD.BOX_WEIGHT = 1.0
    # RetinaNet: the student's subnets run their first CROSS_LAYER convs (crossing before that conv's ReLU),
    # the teacher's the rest; in [0, NUM_CONVS], -1 = NUM_CONVS - 1 (the authors' 3 of 4). Faster R-CNN: -1.
    _C.MODEL.DS2D2.CROSSKD.CROSS_LAYER = -1
    # Faster R-CNN: reduction of the KL over the sampled RoIs, values as MODEL.DS2D2.LOSS.ROI_CLS_REDUCTION;
    # "mean" is the authors' (their KL is averaged over each GPU's sampled RoIs).
    _C.MODEL.DS2D2.CROSSKD.ROI_CLS_REDUCTION = "mean"
    # FGD term ("FGD" in TERMS; Yang et al., CVPR 2022; docs/baselines.md): per level, with the teacher's
    # attentions, (ALPHA * sum(fg) + BETA * sum(bg)) of the attention-weighted squared difference, GAMMA *
    # the L1 sums between the attentions, LAMBDA * the squared sum between GCNet block outputs; each / images.
    # Weights: the authors' RetinaNet values (Faster R-CNN: 5e-5, 2.5e-5, 5e-5, 5e-7), set on COCO (~1333x800)
    # with batch 16 (8 GPUs x 2), 2x schedule, FPN width 256. The sums grow with the width, the focal part
    # with the objects per image, the global part with the image area. Each weight >= 0 (0 drops the part).
    _C.MODEL.DS2D2.FGD = CN()
    _C.MODEL.DS2D2.FGD.ALPHA = 1e-3  # alpha: foreground part of loss_fgd_fea
    _C.MODEL.DS2D2.FGD.BETA = 5e-4  # beta: background part of loss_fgd_fea
    _C.MODEL.DS2D2.FGD.GAMMA = 5e-4  # gamma: loss_fgd_att (student attentions imitate the teacher's)
    _C.MODEL.DS2D2.FGD.LAMBDA = 5e-6  # lambda: loss_fgd_global (GCNet relation of the features)
    _C.MODEL.DS2D2.FGD.TEMPERATURE = 0.5  # T of the attention softmaxes (the authors' value), > 0
    # Levels distilled (empty: those of MODEL.DS2D2.IN_FEATURES, by default every level both FPNs have at one
    # stride, that an FPN conv computes: same-family RetinaNet P3-P7, Faster R-CNN P2-P5, its max-pooled P6
    # left out, as the authors).
    _C.MODEL.DS2D2.FGD.IN_FEATURES = []
    # Deprecated: replaced by MODEL.DS2D2.INHERIT_TEACHER_NECK_HEAD; False is ignored. Kept so that configs
    # recorded before (every config.yaml of a run holds every key) still load; True is refused, naming the
    # new key (ds2d2.checks.check_config).
    _C.MODEL.DS2D2.FGD.INHERIT_TEACHER_NECK_HEAD = False
    # PKD term ("PKD" in TERMS; Cao et al., NeurIPS 2022): WEIGHT * sum_l mean((z(S_l) - z(T_l))^2) / 2, z
    # each channel standardised over (images of this process, H, W), = 1 - the mean Pearson correlation per
    # level. No adapter: the student's MODEL.FPN.OUT_CHANNELS must equal the teacher's.
    _C.MODEL.DS2D2.PKD = CN()
    # The authors' RetinaNet weight (Faster R-CNN: 6), set on COCO with batch 16 (8 GPUs x 2 images, so
    # statistics over 2 images), 2x schedule, FPN width 256; a correlation: same scale at any width or size.
    _C.MODEL.DS2D2.PKD.WEIGHT = 10.0
    # Levels distilled (empty: the first four levels both FPNs have at one stride, RetinaNet P3-P6, Faster
    # R-CNN P2-P5, as the authors; MODEL.DS2D2.IN_FEATURES is not read).
    _C.MODEL.DS2D2.PKD.IN_FEATURES = []
    # MGD term ("MGD" in TERMS; Yang et al., ECCV 2022): WEIGHT (alpha) * sum_l sum((G_l(A_l(S_l) * M_l) -
    # T_l)^2) / images, a generator G_l (and a 1x1 align conv A_l when the widths differ) per level.
    _C.MODEL.DS2D2.MGD = CN()
    # alpha: the authors' RetinaNet value (Faster R-CNN: 5e-7), set on COCO (~1333x800 inputs) with batch 16,
    # 2x schedule, FPN width 256; the loss is a sum per image, so it grows with image area and width.
    _C.MODEL.DS2D2.MGD.WEIGHT = 2e-5
    # Fraction of positions zeroed in the student's feature (RetinaNet 0.65, Faster R-CNN 0.45), in [0, 1).
    _C.MODEL.DS2D2.MGD.MASK_RATIO = 0.65
    # Levels distilled (empty: as FGD's, RetinaNet P3-P7, Faster R-CNN P2-P5, as the authors).
    _C.MODEL.DS2D2.MGD.IN_FEATURES = []

    # Loss weights l1..l4 of the paper:
    # loss = detection + l1*L_ex_low + l2*L_ex_high + l3*L_im_full + l4*L_im_high.
    # Defaults are the authors' RetinaNet/DIOR values; the configs under configs/ set the other settings.
    _C.MODEL.DS2D2.LOSS = CN()
    _C.MODEL.DS2D2.LOSS.EXPLICIT_LOW = 1e-5  # l1: DISW-weighted MSE on the LL band
    _C.MODEL.DS2D2.LOSS.EXPLICIT_HIGH = 1e-5  # l2: DISW-weighted MSE on the LH/HL/HH bands
    # l3: KD through the frozen teacher head (full-frequency amplifier)
    _C.MODEL.DS2D2.LOSS.IMPLICIT_FULL = 1.0
    _C.MODEL.DS2D2.LOSS.IMPLICIT_HIGH = 1.0  # l4: KD through the high-frequency amplifier head
    # Dense KD: exponent beta of the quality-focal factor |sigmoid(s) - sigmoid(t)|^beta.
    _C.MODEL.DS2D2.LOSS.DENSE_BETA = 1.0
    # Two-stage KD: softmax temperature T of the RoI classification KL (scaled by T^2).
    _C.MODEL.DS2D2.LOSS.ROI_TEMPERATURE = 3.0
    # Two-stage KD: weight of the classification KL inside each implicit term (the box L1 has weight 1).
    _C.MODEL.DS2D2.LOSS.ROI_CLS_WEIGHT = 0.5
    # Two-stage KD: how the classification KL is reduced over the RoIs the student sampled (docs/method.md).
    # "sum_per_2_images": the sum over the sampled RoIs divided by (images on this process / 2), i.e. the sum
    #   over the RoIs of a 2-image batch, as the authors' code computes it on each GPU (2 images per GPU in
    #   their configs; their README trains on 4 GPUs); their l3/l4 were tuned on this sum (~1024 RoIs), and it
    #   stays the same on any number of GPUs.
    # "sum": the plain sum over this process's sampled RoIs (grows with the images per process).
    # "mean": the mean over RoIs (~1000x weaker than the authors' with the same l3/l4).
    _C.MODEL.DS2D2.LOSS.ROI_CLS_REDUCTION = "sum_per_2_images"

    # RetinaNet's P7 (backbone "build_ds2d2_retinanet_resnet_fpn_backbone" only): True = conv on ReLU(P6), as
    # Detectron2's own RetinaNet backbone; False = conv on P6 directly, as the authors' MMDetection RetinaNet.
    _C.MODEL.DS2D2.P7_FROM_RELU_P6 = True

    # Trainer options that Detectron2's DefaultTrainer hard-codes.
    # Passed to DistributedDataParallel; needed only for models with parameters unused in some iterations.
    _C.SOLVER.FIND_UNUSED_PARAMETERS = False
    # Periodic checkpoints (model_NNNNNNN.pth, with optimizer state) this run keeps: 0 = all (Detectron2's
    # behaviour), N = the newest N it wrote. model_final.pth and files from before a --resume are kept.
    _C.SOLVER.CHECKPOINT_MAX_TO_KEEP = 0
    # VOC-style AP: False = area under the interpolated PR curve (VOC2010+), True = 11-point (VOC2007).
    _C.TEST.VOC_USE_07_METRIC = False
    # DOTA patch datasets: True = also merge the patches' detections into full images and score DOTA Task 2
    # (horizontal boxes) or Task 1 (oriented boxes), or write the submission files of an unlabelled split;
    # False = COCO AP on the patches only, the authors' metric (with TEST.DETECTIONS_PER_IMAGE 100,
    # docs/method.md).
    _C.TEST.DOTA_FULL_IMAGES = True
    # Training and test images (ds2d2/data/mapper.py, read by ds2d2_onnx.image_io): one of more pixels (width
    # x height) than this is refused from its header, with its path named, before any pixel buffer exists
    # (a small file declaring a huge image). Default 25000 x 25000; raise it for genuinely larger images.
    _C.INPUT.MAX_PIXELS = DEFAULT_MAX_PIXELS

    # Faster R-CNN's RPN (PROPOSAL_GENERATOR.NAME "DS2D2RPN", ds2d2/rpn.py): an object's best anchor becomes a
    # low-quality positive only if its IoU is >= this; 0.0 = Detectron2's RPN (any IoU), 0.3 = MMDetection's
    # (the authors' min_pos_iou). Read only by DS2D2RPN.
    _C.MODEL.RPN.LOW_QUALITY_MIN_IOU = 0.0

    # ---- Your own datasets, declared in the config (ds2d2/data/own.py, docs/own_data.md) ----
    # One entry per dataset name, usable in DATASETS.TRAIN/TEST: DATASETS.OWN.<name>.FORMAT is "voc", "coco"
    # or "dota", and the other keys are that format's (paths, CLASSES, DOTA patch settings); e.g.
    #   DATASETS: {OWN: {my_train: {FORMAT: voc, ROOT: /data/rsod, SPLIT_FILE: ImageSets/Main/train.txt}}}
    # train_net.py and tools/run_pipeline.py register them in every process; any key can be overridden (or an
    # entry added) on the command line: DATASETS.OWN.my_train.ROOT /other/path.
    _C.DATASETS.OWN = CN(new_allowed=True)


def detector_architecture(cfg: CN) -> str:
    """The meta-architecture of the detector a config trains: MODEL.DS2D2.DETECTOR for the DS2D2 stages 2-3
    (which wrap one), else MODEL.META_ARCHITECTURE."""
    arch = cfg.MODEL.META_ARCHITECTURE
    return cfg.MODEL.DS2D2.DETECTOR if arch in ("DS2D2Amplifier", "DS2D2Distiller") else arch


def model_num_classes(cfg) -> Optional[Tuple[str, int]]:
    """(config key, value) of the number of classes the model predicts; None for other meta-architectures."""
    arch = detector_architecture(cfg)
    if arch in ("RetinaNet", "RotatedRetinaNet"):
        return "MODEL.RETINANET.NUM_CLASSES", cfg.MODEL.RETINANET.NUM_CLASSES
    if arch == "GeneralizedRCNN":
        return "MODEL.ROI_HEADS.NUM_CLASSES", cfg.MODEL.ROI_HEADS.NUM_CLASSES
    return None


def load_config(
    config_file: str, opts: Sequence = (), *, register: bool = True, key: str = "--config-file"
) -> CN:
    """The Detectron2 + DS2D2 config of ``config_file`` with the ``KEY VALUE`` overrides ``opts`` (not
    frozen): every script, tool and test builds its configs here.

    ``DATASETS.OWN`` entries are checked and completed and, with ``register``, registered with what they
    resolve to recorded in the config (``data.own.register_own_datasets``). ``key`` (a flag or config key)
    names the file in errors.
    """
    if not config_file:
        raise ValueError(f"{key} is empty: set it to a YAML config file.")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(
            f"{key}: config file '{config_file}' does not exist (paths are relative to {os.getcwd()})."
        )
    cfg = get_cfg()
    add_ds2d2_config(cfg)
    merge_config(cfg, config_file, opts)
    if register:
        register_own_datasets(cfg)
    return cfg


def config_number(value: object, key: str, minimum: float = 0.0, strict: bool = False) -> float:
    """``value`` as a float when it is a finite number >= ``minimum`` (> with ``strict``), else a ValueError
    naming the config ``key``."""
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    if bad or value < minimum or (strict and value == minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ValueError(f"{key} must be a finite number {bound}, got {value!r}.")
    return float(value)

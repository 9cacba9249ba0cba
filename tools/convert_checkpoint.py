#!/usr/bin/env python
"""Convert an official ZegCLIP or MaskCLIP+ checkpoint (mmseg .pth), LSeg's, FreeSeg's
(detectron2 .pth), XPM's (maskrcnn_benchmark .pth, teacher or student), or the ImageNet
ResNetV1c the official MaskCLIP+ students start from, into an ovseg checkpoint.

Examples:
    python tools/convert_checkpoint.py --method zegclip --input official.pth \\
        --output output/zegclip_voc_official.pth \\
        --config-file configs/voc/zegclip/zegclip_vitb16_inductive_20k_bs16.yaml
    python train_net.py --eval-only \\
        --config-file configs/voc/zegclip/zegclip_vitb16_inductive_20k_bs16.yaml \\
        MODEL.WEIGHTS output/zegclip_voc_official.pth
    # the MaskCLIP+ paper configs' MODEL.WEIGHTS (open-mmlab://resnet101_v1c, backbone only)
    python tools/convert_checkpoint.py --method resnet_v1c --input resnet101_v1c-e67eebb6.pth \\
        --output output/converted/resnet101_v1c_ovseg.pth --config-file \\
        configs/voc/maskclip_plus/maskclip_plus_rn50_r101_deeplabv2_transductive_20k_bs16.yaml
    # an official FreeSeg model_final.pth (its prompts, interaction head and no-object row too)
    python tools/convert_checkpoint.py --method freeseg --input model_final.pth \\
        --output output/converted/freeseg_coco_official.pth \\
        --config-file configs/coco/freeseg/freeseg_r101c_alltask_60k_bs32.yaml
    # the official XPM COCO teacher (the student: xpm_student_bert_official-checkpoint_eval),
    # then train_net.py --eval-only with the same config (it reads the converted file)
    python tools/convert_checkpoint.py --method xpm --input coco_teacher/model_final.pth \\
        --output output/converted/xpm_coco_teacher.pth \\
        --config-file configs/coco/xpm/xpm_teacher_bert_official-checkpoint_eval.yaml
    # OVR-CNN's caption pre-training: the starting MODEL.WEIGHTS of the paper's XPM teacher
    python tools/convert_checkpoint.py --method ovrcnn --input model_pretrained.pth \\
        --output output/converted/ovrcnn_mmss_v07_xpm_teacher.pth \\
        --config-file configs/coco/xpm/xpm_teacher_bert_ovrcnn_90k_bs8.yaml

Every official tensor is renamed into ovseg's names or dropped for a stated reason (frozen
CLIP weights come from MODEL.CLIP; with --config-file they are compared with it; the
ImageNet classifier ``fc`` is dropped); a key ovseg has no place for, or a converted
checkpoint that does not fit the config's model, fails naming it. The summary counts used,
renamed and dropped tensors; --report writes the per-tensor account. The job itself is
``ovseg.convert``.
"""

import sys

from ovseg.convert.command import main

if __name__ == "__main__":
    sys.exit(main())

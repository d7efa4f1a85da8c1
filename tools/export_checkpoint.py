"""Export a trained RankE model as official-format files (LoRA adapters merged):

    python tools/export_checkpoint.py CONFIG WORK_DIR_OR_CHECKPOINT --out-dir exported
    # LlamaGen: exported/gpt.pt + exported/vq.pt ({"model": state_dict}, the official layout)
    # Janus-Pro: exported/model.safetensors (+ config / tokenizer files of the source directory)

``--policy online|ema|base`` and ``--decoder ema|online|base`` pick the weights (default: the
trained policy and the EMA decoder). ``python tools/export_checkpoint.py -h`` lists every option.
"""
import sys

from rankekit.apis.export import export_main

if __name__ == '__main__':
    sys.exit(export_main())

#!/usr/bin/env python
"""Write a small deterministic synthetic remote-sensing dataset in the real DIOR or DOTA release layout.

    python datasets/make_synthetic.py --format dior --out datasets/synthetic_dior --num-images 64 --seed 0
    python datasets/make_synthetic.py --format dota --out datasets/synthetic_dota --num-images 6 --seed 0

Equal arguments give byte-identical files; an output folder that already holds the same dataset is left as is.
Both layouts carry oriented labels: dior writes DIOR's horizontal XMLs and DIOR-R's oriented ones
(Annotations/Oriented Bounding Boxes: synthetic_diorr_* reads them), dota writes each object's 4 corners.
"""
import argparse
import sys

from ds2d2.data.synthetic import DEFAULT_SPLIT, write_synthetic_dior, write_synthetic_dota

DEFAULTS = {"dior": {"num_images": 64, "image_size": 128}, "dota": {"num_images": 6, "image_size": 2000}}


def parse_args(argv: list) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", required=True, choices=sorted(DEFAULTS), help="release layout to write")
    parser.add_argument("--out", required=True,
                        help="output folder (created; must be empty, new, or an earlier synthetic dataset)")
    parser.add_argument("--num-images", type=int, help="number of images (default: dior 64, dota 6)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (non-negative; default 0)")
    parser.add_argument("--image-size", type=int,
                        help="dior: side of the square images (default 128); dota: nominal scene side "
                             "(default 2000; scenes are 0.75-1.25x, every fourth one 0.3-0.5x)")
    parser.add_argument("--min-size", type=int, help="dota only: smallest side of the normal scenes")
    parser.add_argument("--max-size", type=int, help="dota only: largest side of the normal scenes")
    parser.add_argument("--split", type=float, nargs=3, default=DEFAULT_SPLIT,
                        metavar=("TRAIN", "VAL", "TEST"),
                        help="fractions of images per split (default: 0.5 0.2 0.3)")
    args = parser.parse_args(argv)
    if args.format == "dior" and (args.min_size is not None or args.max_size is not None):
        parser.error("--min-size/--max-size apply to --format dota only")
    for key, value in DEFAULTS[args.format].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: list) -> None:
    args = parse_args(argv)
    if args.format == "dior":
        out = write_synthetic_dior(args.out, args.num_images, args.seed, args.image_size, split=args.split)
    else:
        out = write_synthetic_dota(args.out, args.num_images, args.seed, args.image_size,
                                   min_size=args.min_size, max_size=args.max_size, split=args.split)
    print(f"synthetic {args.format.upper()} dataset ({args.num_images} images, seed {args.seed}) in {out}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""``workbench models``: the offline models (and with --all, every TransformerLens name)."""


def register(sub) -> None:
    p = sub.add_parser("models", help="list the models (offline ones first)")
    p.add_argument("--all", action="store_true", help="also list TransformerLens hub names")
    p.set_defaults(func=main)


def main(args) -> int:
    from workbench.models import list_models

    print(f"{'name':<40} {'kind':<8} {'offline':<8} {'pretrained':<10} description")
    for m in list_models(include_hub=args.all):
        print(f"{m.name:<40} {m.kind:<8} {'yes' if m.offline else 'no':<8} "
              f"{'yes' if m.pretrained else 'NO':<10} {m.description}")
    if not args.all:
        print("\nAny TransformerLens name (gpt2, EleutherAI/pythia-70m-deduped, ...) loads when the "
              "hub is reachable: `workbench models --all`.")
    return 0

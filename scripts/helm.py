#!/usr/bin/env python3
"""The few `helm` commands the chart's tests use, run by Helm's own Go engine
(helm-python-sdk, installed into .tools/helm by scripts/setup.sh) where no
helm binary is installed. Flags mean what they mean to `helm`.

  helm.py template NAME CHART [-n NS] [--set K=V]... [-f FILE]... [--include-crds]
  helm.py install NAME CHART -n NS [--create-namespace] [--set K=V]... [-f FILE]...
  helm.py upgrade NAME CHART -n NS [--reuse-values] [--set K=V]... [-f FILE]...
  helm.py lint CHART [--set K=V]... [-f FILE]...

`install` talks to the cluster of $KUBECONFIG and waits for nothing.
"""

import argparse
import sys

import helm_python as helm


def merged_values(args):
    """Values from -f files, then --set, later ones winning, as helm does."""
    values = {}

    def merge(into, new):
        for k, v in new.items():
            if isinstance(v, dict) and isinstance(into.get(k), dict):
                merge(into[k], v)
            else:
                into[k] = v

    for path in args.values:
        with open(path, encoding="utf-8") as f:
            merge(values, helm.values_from_yaml(f.read()))
    for expr in args.set:
        merge(values, helm.parse_set_string(expr))
    return values


def template(args):
    with helm.Chart.load(args.chart) as chart:
        values = merged_values(args)
        chart.validate_schema(values)
        rendered = chart.render(
            values, name=args.name, namespace=args.namespace, is_install=True
        )
        docs = []
        if args.include_crds:
            for crd in sorted(chart.crds, key=lambda c: c["name"]):
                docs.append(f"# Source: {crd['name']}\n{crd['data']}")
        for path in sorted(rendered):
            body = rendered[path].strip()
            if body and not path.endswith("NOTES.txt"):
                docs.append(f"# Source: {path}\n{body}\n")
        sys.stdout.write("---\n" + "---\n".join(docs))


def install(args):
    apply(args, "install", create_namespace=args.create_namespace)


def upgrade(args):
    apply(args, "upgrade", reuse_values=args.reuse_values)


def apply(args, verb, **options):
    """`helm install` or `helm upgrade`: the release, its values, and what
    the verb alone takes."""
    with helm.Config(namespace=args.namespace) as config:
        release = getattr(config, verb)(
            args.chart,
            args.name,
            merged_values(args),
            namespace=args.namespace,
            timeout=120,
            **options,
        )
    status = (release.get("info") or {}).get("status") or release.get("status", "deployed")
    print(f"release {release.get('name', args.name)} {'installed' if verb == 'install' else 'upgraded'} in {args.namespace}: {status}")


def lint(args):
    report = helm.lint(args.chart, merged_values(args), strict=True)
    for m in report.get("messages", []):
        print(f"{['', 'INFO', 'WARNING', 'ERROR'][m['severity']]}: {m['path']}: {m['error']}")
    for e in report.get("errors", []):
        print(f"ERROR: {e}")
    if report.get("errors") or any(m["severity"] >= 2 for m in report.get("messages", [])):
        sys.exit(1)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, fn in [("template", template), ("install", install), ("upgrade", upgrade), ("lint", lint)]:
        s = sub.add_parser(name)
        if name != "lint":
            s.add_argument("name")
        s.add_argument("chart")
        s.add_argument("-n", "--namespace", default="default")
        s.add_argument("--set", action="append", default=[])
        s.add_argument("-f", "--values", action="append", default=[])
        s.add_argument("--include-crds", action="store_true")
        s.add_argument("--create-namespace", action="store_true")
        s.add_argument("--reuse-values", action="store_true")
        s.set_defaults(fn=fn)
    args = p.parse_args()
    try:
        args.fn(args)
    except helm.HelmError as e:
        sys.exit(f"Error: {e}")


if __name__ == "__main__":
    main()

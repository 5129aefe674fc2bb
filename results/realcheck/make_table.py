"""Collect realcheck result JSONs into a markdown table."""
import json, glob, sys
rows = []
for f in sorted(glob.glob('/work/main/results/realcheck/*.json')):
    d = json.load(open(f))
    if d.get('status') != 'ok':
        rows.append((d['spec']['pair'], d['spec']['method'], d['spec']['budget'], None, d)); continue
    rows.append((d['spec']['pair'], d['spec']['method'], d['spec']['budget'], d['metrics']['retrieval/flickr8k'], d))
order = ['pal','linear','cca','csa','asif','fusemix','structure','random']
rows.sort(key=lambda r: (r[0], r[2], order.index(r[1]) if r[1] in order else 99, json.dumps(r[4]['spec']['method_options'])))
print('| pair | method | options | budget | I→T R@1 | I→T R@5 | T→I R@1 | T→I R@5 | fit s | epochs |')
print('|---|---|---|---|---|---|---|---|---|---|')
for pair, m, b, met, d in rows:
    opts = ','.join(f'{k}={v}' for k, v in d['spec']['method_options'].items()) or 'default'
    if met is None:
        print(f'| {pair} | {m} | {opts} | {b} | FAILED: {str(d.get("error"))[:60]} |||||'); continue
    fi = d['method'].get('fit_info', {})
    ep = fi.get('epochs', fi.get('epochs_run', ''))
    if ep == '' and 'best_epoch' in fi: ep = fi['best_epoch']
    best = fi.get('best_epoch', '')
    eps = f"{ep} (best {best})" if best != '' else str(ep)
    print(f"| {pair} | {m} | {opts} | {b} | {met['i2t_R@1']:.1f} | {met['i2t_R@5']:.1f} | {met['t2i_R@1']:.1f} | {met['t2i_R@5']:.1f} | {d['timings']['fit']:.0f} | {eps} |")

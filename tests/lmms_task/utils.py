"""Document functions of the `laser_testbed` task (laser_testbed.yaml)."""

from laser.paths import assets_dir

SLICE = range(0, 80, 10)
"""The documents used: one question from each of eight scenes (every tenth line of eval.jsonl)."""


def testbed_slice(dataset):
    return dataset.select(SLICE)


def testbed_doc_to_visual(doc):
    from PIL import Image

    with Image.open(assets_dir() / "testbed" / doc["image"]) as image:
        return [image.convert("RGB")]


def testbed_doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def testbed_doc_to_target(doc):
    return doc["answers"][0]


def testbed_process_results(doc, results):
    prediction = results[0].strip().lower()
    return {"exact_match": float(prediction in {a.lower() for a in doc["answers"]})}

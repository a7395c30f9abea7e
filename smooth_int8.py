"""Int8 matrix products that keep the float model's vectors: SmoothQuant and per-token scales.

onnxruntime's quantize_dynamic ("onnx-int8") gives each product's input one int8 scale for the
whole batch. A few channels of a transformer's hidden states run far larger than the rest, so
that scale fits them and the other channels keep a few levels each: vectors drift (cosine ~0.99
against float, ~0.95 on one-word texts) and recall falls. Here every MatMul with constant
weights instead:

- divides its input by a factor per channel and multiplies the weights' rows by it (the same
  product in float), the factor sqrt(max |input| / max |weight|) over the channel, the inputs
  measured on CALIBRATION: the outliers move half into the weights (SmoothQuant, Xiao et al.,
  2023, with alpha 0.5);
- quantizes that input per token, one scale per row (so a text's vector does not depend on the
  rest of its batch either), symmetric, as uint8 around 128;
- quantizes the weights per output column to int8;
- multiplies in integers (MatMulInteger, uint8 x int8: the CPU's VNNI and AMX kernels) and scales
  the result back to float.

Inputs shared by several products (query, key and value) are smoothed and quantized once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Texts whose hidden states give each channel's range: short and long, Spanish and English, the
# kind of thing a role-play conversation remembers. The factors are square roots of ranges, so a
# few dozen texts settle them.
CALIBRATION = [
    "ok",
    "hola",
    "thanks!",
    "sí, claro",
    "Good night, see you tomorrow.",
    "¿Te acuerdas de cuando fuimos a la playa?",
    "Mi hermana Lucía trabaja de enfermera en el hospital de Sevilla.",
    "My brother moved to Boston last year because of his new job as a software developer.",
    "Tiene miedo a las tormentas desde que pasó un verano en Lisboa con su abuela.",
    "She plays the violin every Thursday with some friends from the conservatory.",
    "El martes pasado discutió con su padre sobre la herencia y no se hablan desde entonces.",
    "We adopted a grey cat from the shelter and called her Pepper; she sleeps on my keyboard.",
    "Le encanta la tortilla de patatas, pero no soporta las lentejas ni el pulpo.",
    "When I was twelve we lived above a bakery, and the whole flat smelled of bread at dawn.",
    "Prometió a Marta que irían juntos a Oporto en agosto, cuando terminara los exámenes.",
    "I'm allergic to peanuts, so please don't bring those cookies to the party on Saturday.",
    "Ayer estuve en el médico y me dijo que tengo que descansar más y caminar cada día.",
    "Her birthday is on March 3rd; last year I gave her a book of poems and an old watch.",
    "Estudió arquitectura en Granada, terminó la carrera en 2015 y allí conoció a su marido.",
    "The captain laughed and told me about the storm of 1987, when the boat nearly sank.",
    "No sé qué hacer con mi vida. Todos mis amigos tienen trabajo y yo sigo buscando.",
    "Can you remind me what we talked about last week? Something about your cousin's wedding.",
    "Mañana empiezo en el trabajo nuevo y estoy muy nerviosa, no he dormido nada.",
    "[shares a photo of a dog running on the beach] This is Rufo, he loves the sea.",
    "Siempre dice que nadie cocina el cocido como su abuela, y tiene razón. "
    "Los domingos íbamos todos a su casa del pueblo, comíamos en el patio bajo la parra y "
    "después los mayores jugaban a las cartas mientras los niños corríamos por el campo.",
    "I've been thinking about what you said about forgiveness. It's hard, because she never "
    "apologized, but carrying this anger around is exhausting, and I miss who we used to be. "
    "Maybe I'll write to her after the holidays, when things have calmed down a little.",
]
ALPHA = 0.5  # how much of each channel's range moves into the weights


def quantize(source: Path, target: Path, feeds: Sequence[dict[str, np.ndarray]]) -> None:
    """Writes `source` (a float ONNX model of opset 17) to `target` with its MatMuls in int8 as
    above; `feeds` are the model's inputs for each text of CALIBRATION, one text each."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    products = [
        n
        for n in model.graph.node
        if n.op_type == "MatMul" and n.input[1] in weights and weights[n.input[1]].ndim == 2
    ]
    ranges = _input_ranges(model, sorted({n.input[0] for n in products}), feeds)
    factors = {}
    for name, reach in ranges.items():
        rows = np.max(
            [np.abs(weights[n.input[1]]).max(axis=1) for n in products if n.input[0] == name],
            axis=0,
        )
        factor = np.maximum(reach, 1e-5) ** ALPHA / np.maximum(rows, 1e-5) ** (1 - ALPHA)
        factors[name] = np.clip(factor, 1e-2, 1e2).astype(np.float32)

    constants: dict[str, np.ndarray] = {
        "smooth/one_127th": np.array([1 / 127], np.float32),
        "smooth/tiny": np.array([1e-8], np.float32),
        "smooth/128": np.array([128], np.float32),
        "smooth/zero_point": np.array(128, np.uint8),
    }
    nodes = []
    quantized: dict[str, tuple[str, str]] = {}
    targets = {n.name for n in products}
    for node in model.graph.node:
        if node.name not in targets:
            nodes.append(node)
            continue
        name = node.input[0]
        if name not in quantized:
            p = f"{name}/smooth/"
            constants[p + "inverse"] = 1 / factors[name]
            nodes += [
                helper.make_node("Mul", [name, p + "inverse"], [p + "x"]),
                helper.make_node("Abs", [p + "x"], [p + "abs"]),
                helper.make_node("ReduceMax", [p + "abs"], [p + "max"], axes=[-1], keepdims=1),
                helper.make_node("Max", [p + "max", "smooth/tiny"], [p + "reach"]),
                helper.make_node("Mul", [p + "reach", "smooth/one_127th"], [p + "scale"]),
                helper.make_node("Div", [p + "x", p + "scale"], [p + "levels"]),
                helper.make_node("Round", [p + "levels"], [p + "rounded"]),
                # uint8 around 128, not int8: int8 x int8 products have no fast kernel in
                # onnxruntime on this CPU (0.29x float, against ~2x).
                helper.make_node("Add", [p + "rounded", "smooth/128"], [p + "shifted"]),
                helper.make_node("Cast", [p + "shifted"], [p + "q"], to=TensorProto.UINT8),
            ]
            quantized[name] = (p + "q", p + "scale")
        q, scale = quantized[name]
        w = weights[node.input[1]].astype(np.float32) * factors[name][:, None]
        column = np.maximum(np.abs(w).max(axis=0), 1e-8) / 127
        p = f"{node.name}/smooth/"
        constants[p + "w"] = np.round(w / column).astype(np.int8)
        constants[p + "column"] = column.astype(np.float32)
        nodes += [
            helper.make_node("MatMulInteger", [q, p + "w", "smooth/zero_point"], [p + "int"]),
            helper.make_node("Cast", [p + "int"], [p + "float"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [p + "float", scale], [p + "rows"]),
            helper.make_node("Mul", [p + "rows", p + "column"], [node.output[0]]),
        ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    used = {i for n in nodes for i in n.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    kept += [numpy_helper.from_array(value, name) for name, value in constants.items()]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    onnx.save(model, str(target))


def _input_ranges(
    model: Any, names: list[str], feeds: Sequence[dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """max |value| per channel of each tensor in `names` over `feeds`, one text each (no padding
    in the figures)."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(
        [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names]
    )
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    reaches: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed), strict=True):
            reaches[name].append(np.abs(value).reshape(-1, value.shape[-1]).max(axis=0))
    return {name: np.max(found, axis=0) for name, found in reaches.items()}

"""The user-tag profile model (UTPM: Su Yan et al., "Learning to Build User-tag Profile in
Recommendation System", CIKM 2020): a user vector u from attention over feature fields and
an FM-style crossing, and tags on the label side, so one product with the tag table ranks
the whole vocabulary.

    user fields:  categorical u_<k> ─> embedding ─────────────────────────┐
                  tag lists (tags, weights) ─> tag embedding ─> intra-field │ attention (per head)
                                                                           ├─> inter-field attention ─┐
                                                                           └─> FM crossing ─> norm ────┴─> MLP ─> u
    label side:   s(u, t) = u . e_t + b_t;  score(u, t) = log(exp(s(u, t)) + sum_f c_f w_f(u, t))

- The echo (``FieldEcho``) carries the user's own tags to the label side: w_f(u, t) is the
  user's weight on t in field f, c_f >= 0 learned per field. Under the softmax, p(t | u)
  is proportional to exp(s(u, t)) + sum_f c_f w_f(u, t): a Dirichlet-multinomial posterior
  whose prior is the tower's and whose counts are the user's history, so a long history
  outweighs popularity and a short one does not. Through u alone the model must re-learn
  the identity "a user's tags are their interests" tag by tag, which sparse data does not
  teach. ``tag_model.echo = "share"`` adds sum_f beta_f share_f(t) to s instead (the
  shares of a short and a long history look alike).

- Intra-field attention pools each multi-valued field (the user's tags by long and short
  profile weight, by decayed impressions, by decayed clicks): alpha_i = softmax_i(q_h^T
  ReLU(W e_i + b) + log w_i), the query q_h of head h shared by every field, padding
  masked. The log of the tag's weight in the field is a prior: with q = 0 the pooling is
  the weighted mean of the tag embeddings.
- Inter-field attention merges the field vectors the same way with its own query per head;
  the heads are concatenated (``heads``, default 2).
- FM crossing: sum_{i<j} f_i * f_j over the field vectors (elementwise), computed as
  ((sum f)^2 - sum f^2) / 2 in O(k d), then layer-normalised.

Losses (``utpm.loss``), over impressions of day D, the user's fields from D-1's tables:

- ``joint`` (the paper's): an impression of article a is clicked with probability
  sigmoid(sum_t w_at score(u, t) / sum_t w_at), the article's tag weights w_at;
- ``split``: each (impression, tag) pair is an example of its own with the impression's
  click as label (as the multi-task model's triples are);
- ``softmax``: each clicked impression is a draw from softmax(scores over the whole
  vocabulary), the target spread over the article's tags by their weights. Above
  utpm.full_softmax_max_tags tags, a sampled softmax (utpm.sampled_negatives uniform
  negatives shared by the batch, with the log-Q correction).

The saved network maps the raw fields (strings and floats) to ``scores`` over the
vocabulary; the vocabulary's order is in the version's metadata.
"""

from __future__ import annotations

import math

import keras
import keras_rs  # noqa: F401  (registers DotInteraction and FeatureCross, so saved fm and dcn towers load)
from keras import ops

from models.layers import build_optimizer
from schemas.config import TAG_MODEL_ECHOES, TAG_MODEL_LOSSES, TAG_MODEL_TOWERS

LOSSES = TAG_MODEL_LOSSES
NEG = -1e9


@keras.saving.register_keras_serializable(package="tagrecall")
class FieldAttention(keras.layers.Layer):
    """Attention pooling over the items of a field, one query per head:
    alpha_i = softmax_i(q_h^T ReLU(W x_i + b) + log w_i) over the unmasked items.

    call(items (B, L, d), weights (B, L), present (B, L), False where padded) -> pooled
    (B, heads, d); ``attention`` gives the weights themselves (B, heads, L). A row whose
    items are all padding pools to zeros. One instance applied to several fields
    shares its queries across them."""

    def __init__(self, heads: int = 2, units: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.heads, self.units = heads, units
        self.project = keras.layers.Dense(units, activation="relu", name="project")

    def build(self, items_shape, weights_shape=None, present_shape=None):
        self.project.build(items_shape)
        self.query = self.add_weight(name="query", shape=(self.units, self.heads), initializer="zeros")

    def attention(self, items, weights, present):
        logits = ops.matmul(self.project(items), self.query)            # (B, L, H)
        mask = ops.cast(present, logits.dtype)[..., None]
        prior = ops.log(ops.maximum(ops.cast(weights, logits.dtype), 1e-12))[..., None]
        logits = logits + prior * mask + (1.0 - mask) * NEG
        alpha = ops.softmax(logits, axis=1) * mask                      # all-masked rows -> 0
        return ops.transpose(alpha, (0, 2, 1))                           # (B, H, L)

    def call(self, items, weights, present):
        alpha = self.attention(items, weights, present)
        return ops.matmul(alpha, items)                                  # (B, H, d)

    def get_config(self):
        return {**super().get_config(), "heads": self.heads, "units": self.units}


@keras.saving.register_keras_serializable(package="tagrecall")
class FMCross(keras.layers.Layer):
    """The pairwise interactions of k field vectors: (B, k, ..., d) -> sum_{i<j} f_i * f_j
    (B, ..., d), as ((sum_i f_i)^2 - sum_i f_i^2) / 2."""

    def call(self, fields):
        total = ops.sum(fields, axis=1)
        return 0.5 * (ops.square(total) - ops.sum(ops.square(fields), axis=1))


@keras.saving.register_keras_serializable(package="tagrecall")
class PairAttentionPooling(keras.layers.Layer):
    """AFM's attention-based pooling of the pairwise interactions (Xiao et al., IJCAI 2017):
    over the pairs i < j of k field vectors, p_ij = f_i * f_j (elementwise) and

        a_ij = softmax_ij(h^T ReLU(W p_ij + b)),   pooled = sum_ij a_ij p_ij,

    the softmax over the pairs whose fields are both present (AFM sums over the non-zero
    features only). h starts at zero, so the pooling starts as the mean of the pairwise
    products: FM's second-order term divided by the number of pairs.

    call(fields (B, k, d), present (B, k), False where a field is empty; None: all present)
    -> pooled (B, d); ``attention`` gives a (B, k (k - 1) / 2), the pairs in the order of
    itertools.combinations. A row with no pair of present fields pools to zeros."""

    def __init__(self, units: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.project = keras.layers.Dense(units, activation="relu", name="project")

    def build(self, fields_shape, present_shape=None):
        if len(fields_shape) != 3 or fields_shape[1] is None or fields_shape[1] < 2:
            raise ValueError(f"PairAttentionPooling needs fields of shape (batch, k >= 2, dim), got {fields_shape}")
        self.project.build((fields_shape[0], None, fields_shape[-1]))
        self.query = self.add_weight(name="query", shape=(self.units,), initializer="zeros")

    @staticmethod
    def _pairs(fields):
        k = fields.shape[1]
        return [i for i in range(k) for _ in range(i + 1, k)], [j for i in range(k) for j in range(i + 1, k)]

    def _products(self, fields):
        left, right = self._pairs(fields)
        return ops.take(fields, left, axis=1) * ops.take(fields, right, axis=1)       # (B, P, d)

    def attention(self, fields, present=None):
        logits = ops.sum(self.project(self._products(fields)) * self.query, axis=-1)  # (B, P)
        if present is None:
            return ops.softmax(logits, axis=-1)
        left, right = self._pairs(fields)
        present = ops.cast(present, "bool")
        mask = ops.cast(ops.logical_and(ops.take(present, left, axis=1), ops.take(present, right, axis=1)),
                        logits.dtype)
        return ops.softmax(logits + (1.0 - mask) * NEG, axis=-1) * mask               # no pair -> 0

    def call(self, fields, present=None):
        alpha = self.attention(fields, present)
        return ops.sum(alpha[..., None] * self._products(fields), axis=1)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="tagrecall")
class TagScores(keras.layers.Layer):
    """The label side: a tag embedding table E (T, d) and bias b (T).
    call(u (B, d)) -> u E^T + b (B, T); ``gather(u, ids)`` -> score of each id (B, L)."""

    def __init__(self, tags: int, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.tags, self.dim = tags, dim

    def build(self, input_shape):
        self.embeddings = self.add_weight(name="embeddings", shape=(self.tags, self.dim),
                                          initializer=keras.initializers.RandomNormal(stddev=0.05))
        self.bias = self.add_weight(name="bias", shape=(self.tags,), initializer="zeros")

    def call(self, u):
        return ops.matmul(u, ops.transpose(self.embeddings)) + self.bias

    def gather(self, u, ids):
        e = ops.take(self.embeddings, ids, axis=0)                      # (B, L, d)
        return ops.sum(e * u[:, None, :], axis=-1) + ops.take(self.bias, ids, axis=0)

    def get_config(self):
        return {**super().get_config(), "tags": self.tags, "dim": self.dim}


@keras.saving.register_keras_serializable(package="tagrecall")
class FieldEcho(keras.layers.Layer):
    """The user's own tags on the label side, combined with the tower's score s(u, t) =
    u . e_t + b_t in one of two ways (``mode``):

    - ``posterior`` (default): score(u, t) = log(exp(s(u, t)) + m(u, t)), m(u, t) = sum_f
      c_f w_f(u, t), w_f(u, t) the user's weight on t in field f (0 when absent), c_f =
      softplus(beta_f) >= 0 per field (1 at initialisation). The softmax over these scores
      is p(t | u) proportional to exp(s(u, t)) + m(u, t): the posterior predictive of a
      Dirichlet-multinomial whose prior is the tower's (popularity, the user's features) and
      whose counts are the user's own history. A user with three decayed clicks stays
      close to the prior; one with three hundred is ruled by them.
    - ``share``: score(u, t) = s(u, t) + sum_f beta_f share_f(t), share_f(t) the tag's share
      of the user's field f (beta 1 at initialisation): the same pull whatever the length
      of the history.

    ``call(ids (B, F, L) label ids, -1 or less where padded or unknown; weights (B, F, L),
    >= 0, 0 where padded)`` -> the echo (B, T): m(u, t) or sum_f beta_f share_f(t);
    ``gather(ids, weights, query (B, Q))`` -> the echo of each queried id; ``combine(s,
    echo)`` -> the score."""

    MODES = TAG_MODEL_ECHOES

    # "share" when the config names no mode: what models saved before the modes existed did.
    def __init__(self, tags: int, fields: int, mode: str = "share", **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"unknown echo mode {mode!r}; known: {', '.join(self.MODES)}")
        self.tags, self.fields, self.mode = tags, fields, mode

    def build(self, ids_shape, weights_shape=None):
        start = math.log(math.e - 1.0) if self.mode == "posterior" else 1.0   # softplus(log(e - 1)) = 1
        self.beta = self.add_weight(name="beta", shape=(self.fields,), initializer=keras.initializers.Constant(start))

    def _flat(self, ids, weights):
        b = ops.shape(ids)[0]
        w = ops.maximum(ops.cast(weights, "float32"), 0.0)
        if self.mode == "posterior":
            values = w * ops.softplus(self.beta)[None, :, None]
        else:   # a tag outside the vocabulary keeps its part of the share, without a column
            values = w / ops.maximum(ops.sum(w, axis=-1, keepdims=True), 1e-12) * self.beta[None, :, None]
        values = ops.where(ids >= 0, values, 0.0)
        return ops.reshape(ids, (b, -1)), ops.reshape(values, (b, -1))

    def call(self, ids, weights):
        ids, values = self._flat(ids, weights)
        b = ops.shape(ids)[0]
        valid = ids >= 0
        rows = ops.arange(b)[:, None] * self.tags
        segments = ops.reshape(ops.where(valid, rows + ids, b * self.tags), (-1,))
        summed = ops.segment_sum(ops.reshape(values, (-1,)), segments, num_segments=b * self.tags + 1)
        return ops.reshape(summed[:-1], (b, self.tags))

    def gather(self, ids, weights, query):
        ids, values = self._flat(ids, weights)
        same = ops.cast(ops.equal(query[:, :, None], ids[:, None, :]), values.dtype)
        return ops.sum(same * values[:, None, :], axis=-1)

    def combine(self, scores, echo):
        if self.mode == "posterior":
            # log(exp(s) + m). The 1e-30 keeps log and its gradient finite where m = 0 (most
            # tags of most users); it moves the score by about exp(-69 - s).
            return ops.logaddexp(scores, ops.log(ops.maximum(echo, 0.0) + 1e-30))
        return scores + echo

    def get_config(self):
        return {**super().get_config(), "tags": self.tags, "fields": self.fields, "mode": self.mode}


TOWERS = TAG_MODEL_TOWERS


def _mlp(x, units, prefix: str):
    for i, n in enumerate(units):
        x = keras.layers.Dense(n, activation="relu", name=f"{prefix}_{i}")(x)
    return x


def _baseline_tower(tower: str, fields: list, heads: int, embedding_dim: int, units,
                    present: list | None = None) -> object:
    """The user representation of a baseline of the UTPM paper from the field vectors
    (each (B, d): a categorical embedding, or a tag field's weighted mean of embeddings):

    - ``youtube_dnn``: the concatenated field vectors through the MLP (Covington et al. 2016);
    - ``fm``: the field vectors (the linear part) beside every pairwise dot product
      <f_i, f_j> (keras-rs ``DotInteraction``: FM's second-order terms), through the MLP;
    - ``dcn``: a cross network of two keras-rs ``FeatureCross`` layers on the concatenated
      vectors (x_{l+1} = x_0 * (W x_l + b) + x_l) beside the MLP (Wang et al. 2017);
    - ``autoint``: two layers of multi-head self-attention over the fields with residual
      connections (Song et al. 2019), flattened, through the MLP;
    - ``afm``: the field vectors (the linear part) beside ``PairAttentionPooling`` of the
      pairwise products (Xiao et al. 2017), no MLP: AFM is shallow, its projection p of the
      pooled vector is the user_vector layer that follows;
    - ``nfm``: the field vectors (the linear part) beside the MLP of the bi-interaction
      pooling sum_{i<j} f_i * f_j (``FMCross``; He and Chua 2017), layer-normalised where
      the paper batch-normalises, so a user's vector does not hang on the batch it is in.

    ``present`` (B,) booleans per field, False where the field is empty (its vector is
    zeros): AFM's attention skips the pairs of an absent field."""
    flat = keras.layers.Concatenate(name="fields_flat")(fields) if len(fields) > 1 else fields[0]
    if tower == "youtube_dnn":
        return _mlp(flat, units, "user")
    if tower == "fm":
        if len(fields) < 2:
            return _mlp(flat, units, "user")
        pairs = keras_rs.layers.DotInteraction(name="fm_pairs")(fields)
        return _mlp(keras.layers.Concatenate(name="linear_and_pairs")([flat, pairs]), units, "user")
    if tower == "dcn":
        x = flat
        for i in range(2):
            x = keras_rs.layers.FeatureCross(name=f"cross_{i}")(flat, x)
        return keras.layers.Concatenate(name="cross_and_deep")([x, _mlp(flat, units, "user")])
    if tower == "autoint":
        x = ops.stack(fields, axis=1)                                                       # (B, k, d)
        for i in range(2):
            attended = keras.layers.MultiHeadAttention(heads, embedding_dim, name=f"self_attention_{i}")(x, x)
            x = ops.relu(attended + keras.layers.Dense(embedding_dim, name=f"residual_{i}")(x))
        return _mlp(keras.layers.Flatten(name="attended_fields")(x), units, "user")
    if tower in ("afm", "nfm") and len(fields) < 2:
        return flat   # no pair to cross: the linear part alone
    if tower == "afm":
        mask = ops.stack(present, axis=1) if present is not None else None
        pooled = PairAttentionPooling(embedding_dim, name="pair_attention")(ops.stack(fields, axis=1), mask)
        return keras.layers.Concatenate(name="linear_and_pairs")([flat, pooled])
    if tower == "nfm":
        crossed = keras.layers.LayerNormalization(name="bi_interaction_norm")(
            FMCross(name="bi_interaction")(ops.stack(fields, axis=1)))
        return keras.layers.Concatenate(name="linear_and_deep")([flat, _mlp(crossed, units, "user")])
    raise ValueError(f"unknown user tower {tower!r}; known: {', '.join(TOWERS)}")


def build_network(user_features: list[str], fields: list[str], vocabularies: dict[str, list[str]],
                  tags: list[str], field_length: int, embedding_dim: int = 16, heads: int = 2,
                  units: list[int] | tuple[int, ...] = (64,), user_dim: int = 32,
                  tower: str = "utpm", echo: str = "posterior") -> tuple[keras.Model, keras.Model]:
    """(user_model: inputs -> {"user": u, "field_ids", "field_shares"}, network: inputs ->
    {"scores": (B, T)}), sharing layers. With multi-valued fields the scores include
    ``FieldEcho`` in mode ``echo``: score(u, t) = log(exp(u . e_t + b_t) + sum_f c_f w_f(u, t))
    (``posterior``) or u . e_t + b_t + sum_f beta_f share_f(t) (``share``).

    Inputs: ``u_<k>`` (string, (1,)) per user feature, ``<f>_tags`` (string, (L,), "" pads)
    and ``<f>_weights`` (float, (L,)) per multi-valued field. ``tower`` (TOWERS) picks how
    u is made from the fields; every tower shares the inputs, the embeddings and the label
    side, so the towers compare on the same footing."""
    if tower not in TOWERS:
        raise ValueError(f"unknown user tower {tower!r}; known: {', '.join(TOWERS)}")
    inputs = {f"u_{k}": keras.Input(shape=(1,), dtype="string", name=f"u_{k}") for k in user_features}
    for f in fields:
        inputs[f"{f}_tags"] = keras.Input(shape=(field_length,), dtype="string", name=f"{f}_tags")
        inputs[f"{f}_weights"] = keras.Input(shape=(field_length,), dtype="float32", name=f"{f}_weights")

    categorical = []                                                                        # (B, 1, d) each
    for k in user_features:
        vocab = vocabularies[f"u_{k}"]
        ids = keras.layers.StringLookup(vocabulary=vocab, num_oov_indices=1, name=f"lookup_u_{k}")(inputs[f"u_{k}"])
        categorical.append(keras.layers.Embedding(len(vocab) + 1, embedding_dim, name=f"embed_u_{k}")(ids))
    label_ids, field_weights, embedded, presents = [], [], [], []
    if fields:
        lookup = keras.layers.StringLookup(vocabulary=tags, mask_token="", num_oov_indices=1, name="lookup_tags")
        embed = keras.layers.Embedding(len(tags) + 2, embedding_dim, name="embed_tags")
        for f in fields:
            ids = lookup(inputs[f"{f}_tags"])
            present = ops.not_equal(ids, 0)
            embedded.append(embed(ids))
            presents.append(present)
            field_weights.append(ops.where(present, ops.maximum(inputs[f"{f}_weights"], 0.0), 0.0))
            label_ids.append(ops.cast(ids, "int32") - 2)          # 0 padding, 1 unknown -> below 0
    if tower == "utpm":
        field_vectors = [ops.repeat(e, heads, axis=1) for e in categorical]                 # (B, H, d)
        if fields:
            intra = FieldAttention(heads, embedding_dim, name="intra_field_attention")
            field_vectors += [intra(e, inputs[f"{f}_weights"], present)
                              for f, e, present in zip(fields, embedded, presents, strict=True)]
        stacked = ops.stack(field_vectors, axis=1)                                          # (B, k, H, d)
        batch_ones = ops.ones_like(stacked[:, :, 0, 0])                                     # (B, k)
        inter = FieldAttention(heads, embedding_dim, name="inter_field_attention")
        merged = []
        for h in range(heads):   # head h of the inter-field attention over head h's field vectors
            pooled = inter(stacked[:, :, h, :], batch_ones, ops.ones_like(batch_ones))     # (B, H, d)
            merged.append(pooled[:, h, :])
        attended = keras.layers.Concatenate(name="attended")(merged)                       # (B, H d)
        crossed = keras.layers.Flatten(name="crossed")(FMCross(name="fm_cross")(stacked))  # (B, H d)
        x = _mlp(keras.layers.Concatenate(name="linear_and_cross")(
            [attended, keras.layers.LayerNormalization(name="cross_norm")(crossed)]), units, "user")
    else:
        pooled = [e[:, 0, :] for e in categorical]
        pooled += [ops.sum(e * (w / ops.maximum(ops.sum(w, axis=-1, keepdims=True), 1e-12))[..., None], axis=1)
                   for e, w in zip(embedded, field_weights, strict=True)]
        present = [ops.greater(ops.ones_like(e[:, 0, 0]), 0.0) for e in categorical]   # always there
        present += [ops.greater(ops.sum(w, axis=-1), 0.0) for w in field_weights]
        x = _baseline_tower(tower, pooled, heads, embedding_dim, units, present)
    u = keras.layers.Dense(user_dim, name="user_vector")(x)
    scores = TagScores(len(tags), user_dim, name="tag_scores")(u)
    outputs = {"user": u}
    if fields:
        outputs |= {"field_ids": ops.stack(label_ids, axis=1), "field_weights": ops.stack(field_weights, axis=1)}
        layer = FieldEcho(len(tags), len(fields), mode=echo, name="field_echo")
        scores = layer.combine(scores, layer(outputs["field_ids"], outputs["field_weights"]))
    user_model = keras.Model(inputs, outputs, name=f"{tower}_user")
    network = keras.Model(inputs, {"scores": keras.layers.Identity(name="scores")(scores)}, name=tower)
    return user_model, network


def _weights(w, mask):
    w = ops.where(mask, ops.cast(w, "float32"), 0.0)
    return w / ops.maximum(ops.sum(w, axis=-1, keepdims=True), 1e-12)


def joint_loss(scores, weights, mask, click):
    """Mean BCE of each impression's click against sigmoid(sum_t w_t s_t / sum_t w_t);
    ``scores`` (B, L): score(u, t) of the article's tags, ``mask`` where a tag is present."""
    logit = ops.sum(_weights(weights, mask) * scores, axis=-1)
    has_tags = ops.cast(ops.any(mask, axis=-1), "float32")
    bce = ops.binary_crossentropy(ops.cast(click, "float32"), logit, from_logits=True)
    return ops.sum(bce * has_tags) / ops.maximum(ops.sum(has_tags), 1.0)


def split_loss(scores, mask, click):
    """Mean BCE over every (impression, tag) pair present, each labelled with the click."""
    m = ops.cast(mask, "float32")
    label = ops.broadcast_to(ops.cast(click, "float32")[:, None], ops.shape(scores))
    bce = ops.binary_crossentropy(label, scores, from_logits=True)
    return ops.sum(bce * m) / ops.maximum(ops.sum(m), 1.0)


def softmax_loss(positive_scores, weights, mask, click, all_scores=None, negative_scores=None,
                 log_q: float = 0.0):
    """Cross-entropy of clicked impressions: target the article's tags by weight.

    Full: ``all_scores`` (B, T), the normaliser over the vocabulary. Sampled:
    ``negative_scores`` (B, S) of uniform negatives, corrected by ``log_q`` = log(S / T)."""
    target = _weights(weights, mask)
    if all_scores is not None:
        log_z = ops.logsumexp(all_scores, axis=-1, keepdims=True)
    else:
        pos = ops.where(mask, positive_scores, NEG)
        log_z = ops.logsumexp(ops.concatenate([pos, negative_scores - log_q], axis=-1), axis=-1, keepdims=True)
    nll = -ops.sum(target * (positive_scores - log_z), axis=-1)
    # The rows in the loss: models/utpm_train.rows_in_loss gathers only these into a batch.
    clicked = ops.cast(click, "float32") * ops.cast(ops.any(mask, axis=-1), "float32")
    return ops.sum(nll * clicked) / ops.maximum(ops.sum(clicked), 1.0)


class UTPMTrainer(keras.Model):
    """Trains the user model and the tag table with one of LOSSES; not saved itself.

    ``y`` holds ``click`` (B,), ``article_ids`` (B, L, int, index into the vocabulary) and
    ``article_weights`` (B, L, 0 where padded)."""

    def __init__(self, user_model: keras.Model, network: keras.Model, loss_name: str,
                 sampled_negatives: int = 0, seed: int = 0):
        super().__init__(name="utpm_trainer")
        if loss_name not in LOSSES:
            raise ValueError(f"unknown UTPM loss {loss_name!r}; known: {', '.join(LOSSES)}")
        self.user_model, self.network, self.loss_name = user_model, network, loss_name
        self.tag_scores = network.get_layer("tag_scores")
        names = {layer.name for layer in network.layers}
        self.echo = network.get_layer("field_echo") if "field_echo" in names else None
        self.sampled_negatives = sampled_negatives
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def call(self, inputs, training=False):
        return self.user_model(inputs, training=training)

    def compile(self, *args, **kwargs):
        """Keras's compile, then the optimizer's slots, so that the train step is traced
        once (``build_optimizer``)."""
        super().compile(*args, **kwargs)
        build_optimizer(self.optimizer, self.trainable_variables)

    def scores_at(self, y_pred, ids):
        """score(u, t) for the tag ids ``ids`` (B, Q) of each row."""
        out = self.tag_scores.gather(y_pred["user"], ids)
        if self.echo is not None:
            out = self.echo.combine(out, self.echo.gather(y_pred["field_ids"], y_pred["field_weights"], ids))
        return out

    def all_scores(self, y_pred):
        out = self.tag_scores(y_pred["user"])
        if self.echo is not None:
            out = self.echo.combine(out, self.echo(y_pred["field_ids"], y_pred["field_weights"]))
        return out

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        u, ids, w, click = y_pred["user"], y["article_ids"], y["article_weights"], y["click"]
        mask = ops.greater(w, 0.0)
        ids = ops.where(mask, ids, 0)
        pos = self.scores_at(y_pred, ids)
        if self.loss_name == "joint":
            loss = joint_loss(pos, w, mask, click)
        elif self.loss_name == "split":
            loss = split_loss(pos, mask, click)
        elif self.sampled_negatives:
            vocab = self.tag_scores.tags
            neg = keras.random.randint((self.sampled_negatives,), 0, vocab, seed=self.seed_generator)
            negative = self.scores_at(y_pred, ops.broadcast_to(neg[None, :], (ops.shape(u)[0], self.sampled_negatives)))
            loss = softmax_loss(pos, w, mask, click, negative_scores=negative,
                                log_q=math.log(self.sampled_negatives / vocab))
        else:
            loss = softmax_loss(pos, w, mask, click, all_scores=self.all_scores(y_pred))
        self.loss_tracker.update_state(loss)
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return {m.name: m.result() for m in self.metrics}

    @property
    def metrics(self):
        return [self.loss_tracker]

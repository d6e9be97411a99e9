"""MDDA (Mancini et al., CVPR 2018): boosting domain adaptation by discovering
latent domains, a baseline of the GradMix paper's Tables 1 and 3.

The network is the digit ConvNet with a *multi-domain alignment layer*
(mDA) after every convolution and after fc1: batch normalisation whose
statistics are kept per domain and mixed by each sample's domain
assignment `w_n` (`[D]`, summing to 1):

    mu_d  = sum_n w_nd sum_p x_np / (P sum_n w_nd)
    var_d = sum_n w_nd sum_p (x_np - mu_d)^2 / (P sum_n w_nd)
    y_np  = gamma * sum_d w_nd (x_np - mu_d) / sqrt(var_d + eps) + beta

(`p` runs over the P spatial positions; `gamma`, `beta` are shared). The
source images' assignments over `D = mdda.latent_domains` latent domains
come from a *domain-assignment branch* (a small conv net on the image,
softmax over D); the target has its own, separate statistics (domain
`D`, one-hot). At test time the running statistics of the target domain
are used.

Each step, the source batches (all sources together, so the latent
domains are discovered across them) and the target (all of `V` and an
unlabelled batch of `U`) pass the network once each, and

    loss = sum_s CE_s + CE(V) + lambda_t H(p(U))
           + lambda_d [mean_n H(w_n) - H(mean_n w_n)]

where `H` is the entropy: the target predictions are made confident, and
the domain assignments confident per sample and balanced over the batch
(MDDA's domain-discovery loss). Each source is classified by the head of
its label space, so sources with different label spaces (category shift)
are handled as GradMix is.

On ResNet-18 (`--config=ucf101`, `MDDAResNet18`) every batch norm becomes
an mDA layer (per-domain statistics, shared gamma and beta, BN momentum 0.9
and PyTorch's epsilon 1e-5); the ImageNet weights are copied in, each batch
norm's moving statistics into every domain. The target batch is this step's
V frames (one per V clip) and a U batch.

Choices MDDA leaves to us: `D` = 2 (our number of sources),
`lambda_t = lambda_d = 0.1`, BN momentum 0.9 and epsilon 1e-3, the branch
(conv 16 3x3 ReLU, global average pool, dense D), SGD at `lr` with
momentum (the digit config's 0.05, 0.9).
"""

import keras
import tensorflow as tf

from gradmix_tf import resnet
from gradmix_tf import sgd
from gradmix_tf.losses import cross_entropy
from gradmix_tf.losses import entropy
from gradmix_tf.tasks.multi_source import MultiSourceTask


def weighted_moments(x, weights):
  """Per-domain mean and variance `[D, C]` of `x [N, ..., C]` weighted by
  `weights [N, D]` (module docstring); a domain with no weight gets 0, 1."""
  reduce_axes = list(range(1, len(x.shape) - 1))
  positions = 1.0
  for axis in reduce_axes:
    positions *= tf.cast(tf.shape(x)[axis], x.dtype)
  per_sample_sum = tf.reduce_sum(x, reduce_axes)               # [N, C]
  per_sample_sq = tf.reduce_sum(tf.square(x), reduce_axes)     # [N, C]
  mass = tf.reduce_sum(weights, 0)[:, None] * positions        # [D, 1]
  safe = tf.where(mass > 0, mass, tf.ones_like(mass))
  mean = tf.matmul(weights, per_sample_sum, transpose_a=True) / safe
  second = tf.matmul(weights, per_sample_sq, transpose_a=True) / safe
  variance = tf.maximum(second - tf.square(mean), 0.0)
  present = mass > 0
  return (tf.where(present, mean, tf.zeros_like(mean)),
          tf.where(present, variance, tf.ones_like(variance)), present[:, 0])


class WeightedBatchNorm(keras.layers.Layer):
  """Batch norm with per-domain statistics mixed by domain weights."""

  def __init__(self, num_domains, momentum=0.9, epsilon=1e-3, **kwargs):
    super().__init__(**kwargs)
    self.num_domains = int(num_domains)
    self.momentum = float(momentum)
    self.epsilon = float(epsilon)

  def build(self, input_shape):
    channels = int(input_shape[-1])
    self.gamma = self.add_weight(shape=(channels,), initializer="ones",
                                 name="gamma")
    self.beta = self.add_weight(shape=(channels,), initializer="zeros",
                                name="beta")
    self.moving_mean = self.add_weight(
        shape=(self.num_domains, channels), initializer="zeros",
        trainable=False, name="moving_mean")
    self.moving_variance = self.add_weight(
        shape=(self.num_domains, channels), initializer="ones",
        trainable=False, name="moving_variance")

  def call(self, x, weights, training=False):
    if training:
      mean, variance, present = weighted_moments(x, weights)
      keep = tf.where(present[:, None], self.momentum, 1.0)
      self.moving_mean.assign(keep * self.moving_mean + (1 - keep) * mean)
      self.moving_variance.assign(keep * self.moving_variance
                                  + (1 - keep) * variance)
    else:
      mean, variance = self.moving_mean, self.moving_variance
    # sum_d w_nd (x - mu_d) / sqrt(var_d + eps), broadcast over positions.
    inv_std = tf.math.rsqrt(variance + self.epsilon)           # [D, C]
    scale = tf.matmul(weights, inv_std)                        # [N, C]
    shift = tf.matmul(weights, mean * inv_std)                 # [N, C]
    expand = [slice(None)] + [None] * (len(x.shape) - 2) + [slice(None)]
    return self.gamma * (x * scale[tuple(expand)]
                         - shift[tuple(expand)]) + self.beta


def domain_discovery_loss(weights):
  """`mean_n H(w_n) - H(mean_n w_n)` of assignments `weights [N, D]`."""
  return tf.reduce_mean(entropy(weights)) - entropy(
      tf.reduce_mean(weights, 0))


class MDDAModel(keras.Model):
  """What both MDDA networks share: the domain-assignment branch on the raw
  image, one head per label space, the target's one-hot domain weights.

  A subclass creates its layers (with `self.rescale` among them), calls
  `add_branch_and_heads` last in `__init__`, and defines
  `features(images, weights, training)`.
  """

  def __init__(self, latent_domains=2, **kwargs):
    super().__init__(**kwargs)
    self.latent_domains = int(latent_domains)

  def add_branch_and_heads(self, num_classes_per_head):
    """The assignment branch (conv 16 3x3 ReLU, global average pool, dense
    D) and the heads."""
    self.branch_conv = keras.layers.Conv2D(16, 3, padding="same",
                                           activation="relu",
                                           name="domain_conv")
    self.branch_pool = keras.layers.GlobalAveragePooling2D()
    self.branch_out = keras.layers.Dense(self.latent_domains,
                                         name="domain_assignment")
    self.num_classes_per_head = tuple(int(n) for n in num_classes_per_head)
    for h, n in enumerate(self.num_classes_per_head):
      setattr(self, f"head_{h}", keras.layers.Dense(n, name=f"head_{h}"))

  @property
  def heads(self):
    return tuple(getattr(self, f"head_{h}")
                 for h in range(len(self.num_classes_per_head)))

  def assignments(self, images):
    """Latent-domain assignment `[N, D]` of source images."""
    x = self.branch_pool(self.branch_conv(self.rescale(images)))
    return tf.nn.softmax(self.branch_out(x))

  def target_weights(self, images):
    """One-hot on the target's own statistics (the last domain)."""
    return tf.one_hot(tf.fill([tf.shape(images)[0]], self.latent_domains),
                      self.latent_domains + 1)

  def call(self, images, head=0, training=False, weights=None):
    if weights is None:
      weights = self.target_weights(images)
    return self.heads[head](self.features(images, weights, training))

  def build_all(self, input_shape):
    zeros = tf.zeros((2,) + tuple(input_shape))
    self.assignments(zeros)
    features = self.features(zeros, self.target_weights(zeros))
    for head in self.heads:
      head(features)
    self.built = True


class MDDANet(MDDAModel):
  """The digit ConvNet with mDA layers, heads, and the assignment branch."""

  def __init__(self, num_classes_per_head, latent_domains=2,
               widths=(32, 32, 64, 64), units=128, **kwargs):
    super().__init__(latent_domains, **kwargs)
    domains = self.latent_domains + 1      # + the target's own statistics
    conv = dict(kernel_size=3, padding="same")
    self.rescale = keras.layers.Rescaling(1.0 / 255.0, name="rescale")
    self.convs = [keras.layers.Conv2D(w, name=f"conv{i + 1}", **conv)
                  for i, w in enumerate(widths)]
    self.fc1 = keras.layers.Dense(units, name="fc1")
    self.norms = [WeightedBatchNorm(domains, name=f"mda{i + 1}")
                  for i in range(len(widths) + 1)]
    self.pool = keras.layers.MaxPooling2D(2)
    self.flatten = keras.layers.Flatten()
    self.add_branch_and_heads(num_classes_per_head)

  def features(self, images, weights, training=False):
    x = self.rescale(images)
    for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
      x = tf.nn.relu(norm(conv(x), weights, training=training))
      if i in (0, 2):
        x = self.pool(x)
    x = self.fc1(self.flatten(x))
    return tf.nn.relu(self.norms[-1](x, weights, training=training))



class MDDAResNet18(MDDAModel):
  """ResNet-18 (`gradmix_tf.resnet`) with an mDA layer in place of every
  batch norm, heads, and the domain-assignment branch.

  Same layers and names as `resnet.resnet18_trunk` (`conv1`, `bn1`,
  `layer2_0_conv1`, `layer2_0_bn1`, `layer2_0_downsample_0`/`_1`, ...), so
  `copy_trunk_weights` takes a trunk's ImageNet weights: convolutions as
  they are, and each batch norm's `gamma`, `beta` and moving statistics,
  the statistics copied to every domain. With one domain's one-hot weights
  and training off, it computes exactly what the trunk computes.
  """

  def __init__(self, num_classes_per_head, latent_domains=2, **kwargs):
    super().__init__(latent_domains, **kwargs)
    domains = self.latent_domains + 1      # + the target's own statistics
    self.rescale = keras.layers.Rescaling(1.0 / 255.0, name="rescale")
    self.normalise = keras.layers.Normalization(
        mean=resnet.IMAGENET_MEAN,
        variance=tuple(v * v for v in resnet.IMAGENET_STD),
        name="imagenet_normalise")
    self.units = []          # (padding or None, conv, mDA layer) by name

    def conv_norm(filters, kernel, stride, name, norm_name):
      pad = kernel // 2
      unit = (keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")
              if pad else None,
              keras.layers.Conv2D(filters, kernel, strides=stride,
                                  padding="valid", use_bias=False, name=name),
              WeightedBatchNorm(domains, momentum=0.9,
                                epsilon=resnet.BN_EPSILON, name=norm_name))
      self.units.append(unit)
      return unit

    self.stem = conv_norm(64, 7, 2, "conv1", "bn1")
    self.pool_pad = keras.layers.ZeroPadding2D(1, name="maxpool_pad")
    self.pool = keras.layers.MaxPooling2D(3, strides=2, name="maxpool")
    self.blocks = []
    channels = 64
    for stage, (filters, stride) in enumerate(resnet.STAGES, start=1):
      for block in range(2):
        prefix = f"layer{stage}_{block}"
        step = stride if block == 0 else 1
        first = conv_norm(filters, 3, step, f"{prefix}_conv1",
                          f"{prefix}_bn1")
        second = conv_norm(filters, 3, 1, f"{prefix}_conv2", f"{prefix}_bn2")
        shortcut = None
        if step != 1 or channels != filters:
          shortcut = conv_norm(filters, 1, step, f"{prefix}_downsample_0",
                               f"{prefix}_downsample_1")
        self.blocks.append((first, second, shortcut))
        channels = filters
    self.avgpool = keras.layers.GlobalAveragePooling2D(name="avgpool")
    self.add_branch_and_heads(num_classes_per_head)

  @staticmethod
  def _apply(unit, x, weights, training):
    pad, conv, norm = unit
    if pad is not None:
      x = pad(x)
    return norm(conv(x), weights, training=training)

  def features(self, images, weights, training=False):
    x = self.normalise(self.rescale(tf.cast(images, tf.float32)))
    x = tf.nn.relu(self._apply(self.stem, x, weights, training))
    x = self.pool(self.pool_pad(x))
    for first, second, shortcut in self.blocks:
      y = tf.nn.relu(self._apply(first, x, weights, training))
      y = self._apply(second, y, weights, training)
      if shortcut is not None:
        x = self._apply(shortcut, x, weights, training)
      x = tf.nn.relu(y + x)
    return self.avgpool(x)


  def copy_trunk_weights(self, trunk):
    """Takes a `resnet.resnet18_trunk`'s weights (class docstring)."""
    for _, conv, norm in self.units:
      conv.kernel.assign(trunk.get_layer(conv.name).kernel)
      bn = trunk.get_layer(norm.name)
      norm.gamma.assign(bn.gamma)
      norm.beta.assign(bn.beta)
      domains = norm.num_domains
      norm.moving_mean.assign(tf.tile(bn.moving_mean[None], [domains, 1]))
      norm.moving_variance.assign(
          tf.tile(bn.moving_variance[None], [domains, 1]))


class MDDATask(MultiSourceTask):
  """MDDA's network and step on sources, V and U."""

  def build_model(self):
    model_config = self.config.model
    input_shape = tuple(self.config.input_shape)
    domains = int(self.config.mdda.latent_domains)
    if model_config.name == "resnet18":
      model = MDDAResNet18(self.data.num_classes_per_head,
                           latent_domains=domains, name="mdda")
      model.build_all(input_shape)
      weights = model_config.get("weights", "")
      if weights and weights != "random":
        trunk = resnet.resnet18_trunk(input_shape)
        resnet.load_trunk_weights(trunk, weights)
        model.copy_trunk_weights(trunk)
      return model
    model = MDDANet(self.data.num_classes_per_head, latent_domains=domains,
                    widths=tuple(model_config.widths),
                    units=int(model_config.units), name="mdda")
    model.build_all(input_shape)
    return model

  def make_phases(self):
    optimizer = sgd.make_main_sgd(self.config)
    return [self.phase("mdda", int(self.config.steps), optimizer,
                       self._mdda_step(optimizer),
                       with_unlabelled=True)]

  def _mdda_step(self, optimizer):
    mdda = self.config.mdda
    model = self.model
    target = self.data.target_head

    def step(indices):
      *source_indices, u_index = indices
      batches = [self.source_batch(i, entry)
                 for i, entry in enumerate(source_indices)]
      images = [x for x, _ in batches]
      labels = [y for _, y in batches]
      sizes = [int(y.shape[0]) for y in labels]
      v_images, v_labels = self.validation_images()
      v_count = tf.shape(v_labels)[0]
      target_images = tf.concat([v_images,
                                 self.unlabelled_batch(u_index)], 0)
      with tf.GradientTape() as tape:
        batch = tf.concat(images, 0)
        weights = model.assignments(batch)
        # The source domains' statistics; the target's weight is zero.
        padded = tf.pad(weights, [[0, 0], [0, 1]])
        features = tf.split(model.features(batch, padded, training=True),
                            sizes)
        losses = [cross_entropy(y, model.heads[s.head](f))
                  for s, y, f in zip(self.data.sources, labels, features)]
        target_logits = model.heads[target](model.features(
            target_images, model.target_weights(target_images),
            training=True))
        val_loss = cross_entropy(v_labels, target_logits[:v_count])
        u_entropy = tf.reduce_mean(entropy(tf.nn.softmax(
            target_logits[v_count:])))
        discovery = domain_discovery_loss(weights)
        total = (tf.add_n(losses) + val_loss
                 + float(mdda.target_entropy_weight) * u_entropy
                 + float(mdda.domain_weight) * discovery)
      applied = self.apply_finite(optimizer,
                                  tape.gradient(total, self.variables),
                                  self.variables, [total])
      out = self.loss_outputs(losses)
      out["applied"] = applied
      out["loss/validation"] = val_loss
      out["entropy/unlabelled"] = u_entropy
      out["entropy/domain_discovery"] = discovery
      return out
    return step

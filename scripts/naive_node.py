#!/usr/bin/env python3
"""A deliberately naive PoseNet node: the baseline of scripts/bench_node_latency.py.

It does what a typical first ROS 2 deep-learning node does, so the benchmark can show what the
real node's design buys:

* subscription with the default reliable QoS and a queue of 10 (frames pile up when the model is
  slower than the camera);
* cv_bridge-style conversion (``imgmsg_to_cv2(msg, 'bgr8')`` reimplemented: an ndarray over the
  message buffer plus a colour conversion; the real cv_bridge does not import under NumPy 2),
  then BGR -> RGB again for PIL;
* torchvision transforms on a PIL image (Resize, CenterCrop, ToTensor, Normalize);
* the eager ``nn.Module`` called inside the subscription callback, publishing from there.

Usage: ``python scripts/naive_node.py MODEL.ts --ros-args -r __ns:=/naive`` (same weights as the
export: the eager PoseNet loads the TorchScript module's ``net`` state_dict).
"""

from __future__ import annotations

import sys

import cv2
import numpy as np
import rclpy
import torch
from geometry_msgs.msg import PoseStamped
from PIL import Image as PILImage
from rclpy.node import Node
from sensor_msgs.msg import Image
from torchvision import transforms

from posenet_ros.model.export import eager_network, load_file


def imgmsg_to_cv2_bgr8(msg) -> np.ndarray:
    """What ROS 2 cv_bridge's ``imgmsg_to_cv2(msg, 'bgr8')`` does for rgb8/bgr8 input."""
    channels = 3
    img = np.ndarray(shape=(msg.height, msg.width, channels), dtype=np.uint8, buffer=msg.data)
    if msg.encoding == 'rgb8':
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    return img


class NaiveNode(Node):
    """Everything in the callback, queue depth 10."""

    def __init__(self, model_path: str, threads: int, device: str = 'cpu', **node_kwargs):
        super().__init__('naive_posenet', **node_kwargs)
        torch.set_num_threads(threads)
        self.device = torch.device(device)
        scripted, meta = load_file(model_path, 'cpu')
        self.model = eager_network(scripted.net.state_dict(), meta['backbone'],
                                   model_path).to(self.device)
        pn = meta['position_normalization']
        self.pos_mean = np.asarray(pn['mean'])
        self.pos_scale = float(pn['scale'])
        inp = meta['input']
        self.tf = transforms.Compose([
            transforms.Resize(inp['resize']), transforms.CenterCrop(inp['crop']),
            transforms.ToTensor(), transforms.Normalize(inp['mean'], inp['std'])])
        self.map_frame = meta['frames']['map_frame']
        self.pub = self.create_publisher(PoseStamped, '~/pose', 10)
        self.create_subscription(Image, '/camera/image_raw', self.callback, 10)
        self.get_logger().info('ready: naive node')

    def predict(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Position and unit quaternion (wxyz, either sign) of one RGB frame."""
        x = self.tf(PILImage.fromarray(rgb)).unsqueeze(0).to(self.device)
        with torch.no_grad():
            out = self.model(x)[0].cpu().numpy().astype(np.float64)
        return out[:3] * self.pos_scale + self.pos_mean, out[3:7] / np.linalg.norm(out[3:7])

    def callback(self, msg):
        """Convert, preprocess, infer and publish, all in the executor thread."""
        bgr = imgmsg_to_cv2_bgr8(msg)
        position, q = self.predict(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        pose = PoseStamped()
        pose.header = msg.header
        pose.header.frame_id = self.map_frame
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = map(float, position)
        o = pose.pose.orientation
        o.w, o.x, o.y, o.z = map(float, q)
        self.pub.publish(pose)


def main(argv=None) -> int:
    argv = sys.argv if argv is None else argv
    args = rclpy.utilities.remove_ros_args(argv)
    if len(args) < 2:
        print('usage: naive_node.py MODEL [THREADS [DEVICE]] [--ros-args ...]', file=sys.stderr)
        return 2
    rclpy.init(args=argv)
    node = NaiveNode(args[1], int(args[2]) if len(args) > 2 else 1,
                     args[3] if len(args) > 3 else 'cpu')
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())

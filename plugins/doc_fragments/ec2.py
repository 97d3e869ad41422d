# Copyright: Skynet developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # Options of the ec2 compute (AWS EC2 through boto3); used only with compute=ec2.
    DOCUMENTATION = r"""
options:
  region:
    description:
      - AWS region of the instances.
      - Defaults to the E(AWS_REGION) or E(AWS_DEFAULT_REGION) environment variable, then the profile's region.
    type: str
  endpoint_url:
    description:
      - URL of the EC2 API, for an EC2-compatible endpoint or a VPC endpoint.
      - Defaults to the E(AWS_ENDPOINT_URL) environment variable, then the region's public endpoint.
    type: str
  profile:
    description:
      - Named profile of the AWS config files to take credentials and region from.
      - Defaults to the E(AWS_PROFILE) environment variable.
    type: str
  aws_access_key_id:
    description:
      - AWS access key id.
      - Defaults to the E(AWS_ACCESS_KEY_ID) environment variable, then the profile, then the instance role.
    type: str
  aws_secret_access_key:
    description:
      - Secret of O(aws_access_key_id); never logged.
      - Defaults to the E(AWS_SECRET_ACCESS_KEY) environment variable.
    type: str
  aws_session_token:
    description:
      - Session token of temporary credentials; never logged.
      - Defaults to the E(AWS_SESSION_TOKEN) environment variable.
    type: str
  instance_type:
    description: EC2 instance type of the instances.
    type: str
    default: t3.micro
  subnet_id:
    description: VPC subnet the instances start in; the default subnet when omitted.
    type: str
  security_groups:
    description: Ids of the security groups of the instances; the VPC's default group when empty.
    type: list
    elements: str
    default: []
  key_name:
    description: Name of the EC2 key pair allowed to log in to the instances.
    type: str
  user_data:
    description: User data (for example a cloud-init script) the instances start with, as plain text.
    type: str
  ec2_health:
    description:
      - Who runs the health checks of the instances. Each instance is a node of its own in the Consul catalog
        (an external node, no agent of ours runs on it), so no Consul agent runs its check.
      - V(skynet) probes each instance (the HTTP GET or TCP connect of its check, with the check's timeout)
        whenever a Skynet module runs (every autoscale cycle; while waiting for new instances) and writes the
        status to the catalog when it changed. Statuses are then as fresh as the autoscale cycle period.
      - V(esm) leaves it to consul-esm, which the operator runs; it probes every check interval.
      - A key of a C(type=ec2) compute of O(computes) too.
    type: str
    choices: [skynet, esm]
    default: skynet
"""
